"""What the serving coordinator runs with, recorded in its database for admin commands.

Admin commands (`status`, `tick`, `start-round`, `canary`, ...) close due rounds, open scheduled
ones and judge candidates. Run from a shell without the service's --profile, --config or
environment, they did it with the defaults: FedAvg where the service runs FedAdam, another goal,
another canary tolerance. The service records its settings when it starts (every gunicorn
worker the same), and an admin command takes them as its defaults, under its own profile, file,
environment and flags.
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields
from typing import Any

from sqlalchemy import select

from coordinator.config import Config, deployment_settings
from coordinator.db import make_engine, session_factory
from coordinator.models import Setting

log = logging.getLogger(__name__)
KEY = "service_settings"


def record(coord: Any) -> None:
    """Store the serving coordinator's deployment settings (coordinator.config.deployment_settings)."""
    with coord.tx() as s:
        s.merge(Setting(key=KEY, value=json.dumps(deployment_settings(coord.config), sort_keys=True)))


def recorded(database_url: str) -> dict[str, Any]:
    """The settings the last serving coordinator recorded ({} when none has served this database).
    Settings this code does not know (recorded by another release) are left out."""
    engine = make_engine(database_url)
    try:
        with session_factory(engine)() as s:
            value = s.scalar(select(Setting.value).where(Setting.key == KEY))
    finally:
        engine.dispose()
    if value is None:
        return {}
    known = {f.name for f in fields(Config)}
    return {k: v for k, v in json.loads(value).items() if k in known}


def note_differences(cfg: Config, served: dict[str, Any]) -> list[str]:
    """The deployment settings this command sets itself to other values than the service's; logged."""
    own = deployment_settings(cfg)
    differ = sorted(k for k, v in served.items() if k in own and own[k] != v)
    if differ:
        log.warning("this command's own settings differ from the serving coordinator's: %s",
                    ", ".join(f"{k}={own[k]!r} (service: {served[k]!r})" for k in differ))
    return differ
