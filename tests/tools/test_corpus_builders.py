"""The third-genre corpus is not vendored (its licence is non-commercial), so its builder is the
only way to repeat docs/quality.md's check: it must keep every post a person wrote, in order,
under the corpus's own pseudonym, and drop the chat server's JOIN/PART lines."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SESSION = """<?xml version="1.0"?>
<Session><Posts>
<Post class="Statement" user="10-19-20sUser7">now im left with this name<terminals/></Post>
<Post class="System" user="10-19-20sUser76">PART<terminals/></Post>
<Post class="Greet" user="10-19-20sUser59">hey everyone  <terminals/></Post>
<Post class="Statement" user="10-19-20sUser59"><terminals/></Post>
</Posts></Session>
"""


def test_build_nps_chat_keeps_posts_in_order_and_drops_system_lines(tmp_path: Path) -> None:
    src = tmp_path / "nps_chat"
    src.mkdir()
    (src / "10-19-20s_706posts.xml").write_text(SESSION, encoding="utf-8")
    out = tmp_path / "nps_chat.jsonl"
    run = subprocess.run([sys.executable, str(ROOT / "corpora" / "build_nps_chat.py"), str(src), str(out)],
                         capture_output=True, text=True, check=True)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert records == [{"user": "10-19-20sUser7", "text": "now im left with this name"},
                       {"user": "10-19-20sUser59", "text": "hey everyone"}]
    assert "2 posts, 2 users" in run.stdout


def test_build_nps_chat_says_what_is_missing(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "corpora" / "build_nps_chat.py"), str(tmp_path / "none"),
                          str(tmp_path / "out.jsonl")], capture_output=True, text=True)
    assert run.returncode != 0
    assert "unzip" in run.stderr and "Traceback" not in run.stderr
