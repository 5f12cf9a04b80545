"""Simulate a population of keyboard devices federating against a real coordinator.

    python -m tools.simulate --corpus FILE --proxy FILE --devices N --rounds R [--data-dir DIR]

1. version 0: the shipped models/v0 (pretrained on the proxy corpus only; `make v0`), or
   --v0 DIR, checked against its manifest's sha256 sums (--pretrain-v0 trains one instead);
2. a real coordinator process (`python -m coordinator serve`) on a free loopback port, with
   version 0 imported as stable;
3. N devices, each enrolled and given the training text of one corpus train user as typing
   history, committed into its own text cache exactly as the keyboard does (TextCache.add);
4. R rounds. Each round every device draws whether it is idle + charging (--participation)
   and whether it will be unplugged mid-training (--dropout); all devices check in through
   the real edge runtime (`edge_runtime.agent.run_once`, in a small process pool, each device
   in its own data directory), train locally, upload clipped (and, with DP, noised) deltas;
   the coordinator validates and aggregates them (FedAvg by default; --server-optimizer) into
   a candidate, which the canary cohort evaluates on its held-out text before it is promoted
   or rejected;
5. after each round the candidate is scored on the corpus's held-out (test) users with the
   keyboard's own predictor (tools.wordeval: top-1, top-3, keystroke savings);
6. a report, DIR/report.md + DIR/report.png (+ report.json), with the n-gram, proxy-only and
   central models as references. --compare-dp also runs a federation with DP noise.

Everything lives under DIR: DIR/models/ (v0, central), DIR/runs/<run>/ (coordinator and
device data, logs; replaced on every run), DIR/reference.json (cached reference scores).

The package, one job per module:

    cli.py         flags, their checks, `simulate()` (corpus -> references -> federations -> report)
    population.py  the corpus's users as devices; version 0 and the central reference
    references.py  scoring a version on the held-out users; the cached reference scores
    devices.py     what runs in the device worker processes (enroll, type, check in)
    federation.py  one federation: coordinator process, devices, the rounds (`Rounds`)
    report.py      the round table, report.md, report.png, report.json
    disk.py        the disk the devices' versions take, said up front and measured at the end
    errors.py      SimulationError

The coordinator process itself is tools.coordinator_process, shared with tools.arm, tools.bench
and the tests.
"""

from tools.simulate.cli import (
    DEFAULT_NOISE_MULTIPLIER,
    SimulationResult,
    add_arguments,
    build_parser,
    check_args,
    cli,
    main,
    simulate,
)
from tools.simulate.errors import SimulationError
from tools.simulate.federation import FederationResult, RoundResult
from tools.simulate.population import Population, load_population

__all__ = ["DEFAULT_NOISE_MULTIPLIER", "FederationResult", "Population", "RoundResult", "SimulationError",
           "SimulationResult", "add_arguments", "build_parser", "check_args", "cli", "load_population", "main",
           "simulate"]
