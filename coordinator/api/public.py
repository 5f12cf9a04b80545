"""Unauthenticated endpoints: health, OpenAPI document, Prometheus metrics, dashboard."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from coordinator import openapi
from coordinator.api.common import coord
from coordinator.metrics import CONTENT_TYPE_LATEST
from protocol import wire

bp = Blueprint("public", __name__)


@bp.get(wire.PATH_HEALTH)
def health() -> Response:
    with coord().engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return jsonify({"ok": True})


@bp.get(wire.PATH_OPENAPI)
def openapi_doc() -> Response:
    return jsonify(openapi.build())


@bp.get(wire.PATH_METRICS)
def metrics() -> Response:
    return Response(coord().metrics.render(), mimetype=CONTENT_TYPE_LATEST.split(";")[0])


@bp.get("/v1/dashboard-data")
def dashboard_data() -> Response:
    """Aggregate facts only (no device ids): versions with canary metrics and epsilon, round counts."""
    c = coord()
    versions = [{k: v[k] for k in ("version_id", "status", "parent_id", "round_id", "epsilon", "delta", "metrics",
                                   "canary_reports", "created_at")}
                | {"canary": next((d["numbers"] for d in v["decisions"] if d["numbers"].get("candidate")), None)}
                for v in c.list_versions()]
    rounds = [{k: r[k] for k in ("round_id", "status", "base_version_id", "goal_count", "min_count", "selected",
                                 "accepted", "rejected", "result_version_id", "reason", "created_at")}
              for r in c.list_rounds()]
    return jsonify({"versions": versions, "rounds": rounds, "canary": c.canary_comparison(),
                    "privacy_population": {k: v for k, v in c.status()["population"].items() if k != "enrolled"}})


DASHBOARD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>FedKeys coordinator</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}.stable{color:#070}.candidate{color:#a60}
.rejected{color:#a00}.retired{color:#777}</style></head>
<body><h1>FedKeys coordinator</h1>
<h2>Top-3 accuracy by version (canary)</h2><svg id="plot" width="640" height="220" role="img"
aria-label="word top-3 accuracy by version"></svg>
<h2>Versions</h2><table id="versions"><thead><tr><th>version</th><th>status</th><th>parent</th><th>round</th>
<th>&epsilon;</th><th>&delta;</th><th>canary reports</th><th>candidate word top-3</th>
<th>stable word top-3</th></tr></thead>
<tbody></tbody></table>
<p id="population"></p>
<h2>Rounds</h2><table id="rounds"><thead><tr><th>round</th><th>status</th><th>base</th><th>goal</th><th>min</th>
<th>selected</th><th>accepted</th><th>rejected</th><th>result</th><th>reason</th></tr></thead><tbody></tbody></table>
<script>
function cell(tr, v, cls){const td=document.createElement('td');td.textContent=(v===null||v===undefined)?'':v;
 if(cls)td.className=cls;tr.appendChild(td);}
function fmt(x){return typeof x==='number'?x.toFixed(4):(x||'');}
fetch('/v1/dashboard-data').then(r=>r.json()).then(d=>{
 const vb=document.querySelector('#versions tbody'), pts=[];
 for(const v of d.versions){const tr=document.createElement('tr');const c=v.canary||{};
  cell(tr,v.version_id);cell(tr,v.status,v.status);cell(tr,v.parent_id);cell(tr,v.round_id);
  cell(tr,typeof v.epsilon==='number'?v.epsilon.toFixed(3):v.epsilon);cell(tr,v.delta);cell(tr,v.canary_reports);
  const ca=c.candidate&&c.candidate.word_top3_acc;
  cell(tr,fmt(ca));cell(tr,fmt(c.stable&&c.stable.word_top3_acc));vb.appendChild(tr);
  if(typeof ca==='number')pts.push([v.version_id,ca,v.status]);}
 const pp=d.privacy_population||{};
 document.getElementById('population').textContent='\u03b5 assumes a population of '+pp.assumed_by_epsilon+
  ' ('+pp.basis+')';
 const rb=document.querySelector('#rounds tbody');
 for(const r of d.rounds){const tr=document.createElement('tr');
  for(const k of ['round_id','status','base_version_id','goal_count','min_count','selected','accepted','rejected',
   'result_version_id','reason'])cell(tr,r[k]);rb.appendChild(tr);}
 const svg=document.getElementById('plot'),W=640,H=220,P=30,NS='http://www.w3.org/2000/svg';
 const el=(n,a)=>{const e=document.createElementNS(NS,n);for(const k in a)e.setAttribute(k,a[k]);
  svg.appendChild(e);return e;};
 el('line',{x1:P,y1:H-P,x2:W-P,y2:H-P,stroke:'#999'});el('line',{x1:P,y1:P,x2:P,y2:H-P,stroke:'#999'});
 if(!pts.length){el('text',{x:P+10,y:H/2}).textContent='no canary results yet';return;}
 const lo=Math.min(...pts.map(p=>p[1])),hi=Math.max(...pts.map(p=>p[1])),span=(hi-lo)||1;
 pts.forEach((p,i)=>{const x=P+(i+0.5)*(W-2*P)/pts.length,y=H-P-(p[1]-lo)/span*(H-3*P)-P/2;
  el('circle',{cx:x,cy:y,r:5,fill:p[2]==='rejected'?'#a00':'#070'});
  el('text',{x:x-20,y:H-P+15,'font-size':10}).textContent=p[0];
  el('text',{x:x+7,y:y-7,'font-size':10}).textContent=p[1].toFixed(3);});
});
</script></body></html>
"""


@bp.get("/dashboard")
def dashboard() -> Response:
    return Response(DASHBOARD, mimetype="text/html")
