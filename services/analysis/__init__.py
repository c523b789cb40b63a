"""Streaming AI analyses of a request and its proposals (see ``docs/analysis.md``).

``providers`` is the interface, ``anthropic_provider`` and ``offline_provider`` implement it,
``prompt`` and ``offline_report`` turn stored data into a prompt or a computed report,
``coalescer`` batches text deltas and ``runner`` schedules, streams and persists analyses;
``service`` is what the REST surface (``handlers/analysis_api.py``) calls and ``models`` the
JSON it answers with.
"""
