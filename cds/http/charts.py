"""``GET /charts/trend.svg``: the trend chart of progression cards (:mod:`cds.trend_chart`).

The query carries numbers and dates only (no identifier of any kind), so the chart is public and
cacheable: no authentication, ``Cache-Control: public``. The labels come from the active rule set's
``texts.trend`` (404 when it has none). Every query is validated strictly: a 400 names the parameter.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..trend_chart import ChartQueryError, parse_query, render
from .errors import error_body

bp = Blueprint("charts", __name__)

#: how long browsers and proxies may keep a chart: it is a pure function of its query (and labels)
MAX_AGE_SECONDS = 86_400
#: the image can load nothing, run nothing and be framed by nothing
CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SVG_TYPE = "image/svg+xml"


@bp.get("/charts/trend.svg")
def trend_svg():
    labels = current_app.extensions["lbp_cds"].rules.current().ruleset.document.texts.trend
    if labels is None:
        return error_body(404, "this rule set has no trend chart (texts.trend)")
    try:
        data = parse_query(request.args.to_dict(flat=False), len(request.query_string))
    except ChartQueryError as e:
        return error_body(400, f"chart query parameter '{e.parameter}': {e.message}", field=e.parameter)
    response = Response(render(data, labels), mimetype=SVG_TYPE)
    response.headers["Cache-Control"] = f"public, max-age={MAX_AGE_SECONDS}"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = CSP
    return response
