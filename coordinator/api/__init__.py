"""HTTP blueprints: `devices` (the wire protocol), `admin`, `public` (health, docs, metrics, dashboard)."""
