"""The fixed reference of bench_http.py: a bare Flask app that answers every hook call with one fixed
card (read from the file named by BENCH_CARD_FILE), served by gunicorn with 2 sync workers:
``gunicorn --chdir bench -w 2 -k sync fixed_card_app:app``."""

from __future__ import annotations

import json
import os

from flask import Flask

URL = "/cds-services/lbp-exercise-progression"

with open(os.environ["BENCH_CARD_FILE"], encoding="utf-8") as f:
    CARD = json.load(f)

app = Flask("fixed-card")
app.json.sort_keys = False  # type: ignore[attr-defined]


@app.post(URL)
def call():
    return app.json.response({"cards": [CARD]})
