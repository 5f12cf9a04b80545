"""The names of the files in a device's data directory, in one place.

    <data_dir>/
        device.json             identity: device id, token, coordinator URL and key (identity; 0600)
        last_keystroke          mtime = the last keystroke, for the idle rule (eligibility.ActivityClock)
        keyboard_token          the keyboard page's key, in the URL it prints (keyboard; 0600)
        text_cache.sqlite3      the typed-text cache, plus its -wal/-shm files (cache)
        .cache.lock             taken to open the cache (shared) or replace its file (exclusive; cache)
        .paused_after_wipe      a wipe in place is under way or could not make its new cache:
                                the next cache made starts paused (cache)
        privacy_ledger.json     every update released and its epsilon (plan_guard)
        unsent_update.json      an update charged to the ledger and not yet delivered: its
        unsent_update.safetensors   round, plan and digest, and its bytes (unsent; 0600)
        evaluations.json        the canary candidates this device evaluated, when, and a report
                                not yet delivered (counts; plan_guard)
        rollout_state.json      the newest signed rollout statement accepted (rollout_guard)
        model_channel.json      stable or canary: what the version in use is (channel)
        personal/               the user's own copy of the LSTM, never uploaded (personal_copy; personalize trains it)
            <version_id>.safetensors
        models/                 verified model versions (versions)
            current.json        {"current": id, "previous": id | null}
            <version_id>/       one complete version directory
            .incoming-*/        a download in progress
            .staging.lock       taken to make and lock a download's folder, or sweep them (versions)

The modules that own each file import its name from here; tests and tools do too.
"""

from __future__ import annotations

IDENTITY_FILE = "device.json"
ENROLL_REQUEST_FILE = ".enroll_request.json"   # an enrollment not yet answered: its retries reuse its id
ACTIVITY_FILE = "last_keystroke"
KEYBOARD_TOKEN_FILE = "keyboard_token"
CACHE_DB = "text_cache.sqlite3"
CACHE_OPEN_LOCK = ".cache.lock"
PAUSE_AFTER_WIPE = ".paused_after_wipe"
LEDGER_FILE = "privacy_ledger.json"
UNSENT_META = "unsent_update.json"    # written after UNSENT_DELTA, deleted before it
UNSENT_DELTA = "unsent_update.safetensors"
EVALUATIONS_FILE = "evaluations.json"
ROLLOUT_STATE_FILE = "rollout_state.json"
CHANNEL_FILE = "model_channel.json"
PERSONAL_DIR = "personal"
RUN_LOCK = ".run.lock"                # held by the one `run` loop of a data directory
MODELS_DIR = "models"
CURRENT_POINTER = "current.json"      # under MODELS_DIR
STAGING_PREFIX = ".incoming-"         # under MODELS_DIR
STAGING_LOCK = ".staging.lock"       # under MODELS_DIR: making a staging directory vs a sweep
