"""`/metrics` in the Prometheus text format (version 0.0.4): requests by endpoint and status,
streams that ended in an error, and the decode thread's snapshot (queue, rows, tokens, soft-step
share, faults, health)."""

from __future__ import annotations

from collections import Counter

from .health import Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# endpoints with a label of their own; any other path counts as "other" (labels stay bounded)
PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/openapi.json", "/docs")


class Metrics:
    """Counters kept by the web server (on its event loop)."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()
        self.stream_errors: Counter[str] = Counter()  # by error type

    def request(self, path: str, status: int) -> None:
        self.requests[(path if path in PATHS else "other", status)] += 1

    def render(self, s: Snapshot) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                v = repr(float(value)) if isinstance(value, float) else str(int(value))
                out.append(f"{name}{labels} {v}")

        metric(
            "selar_requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status code.",
            [(f'{{path="{p}",status="{c}"}}', n) for (p, c), n in sorted(self.requests.items())],
        )
        metric(
            "selar_stream_errors_total",
            "counter",
            "Streams that ended with an error event, by error type.",
            [(f'{{type="{t}"}}', n) for t, n in sorted(self.stream_errors.items())],
        )
        metric("selar_queue_length", "gauge", "Requests waiting for a row.", [("", s.queued)])
        metric("selar_running_rows", "gauge", "Rows decoding.", [("", s.running)])
        metric(
            "selar_prefilling_rows",
            "gauge",
            "Rows whose long prompt is being prefilled in chunks.",
            [("", s.prefilling)],
        )
        metric("selar_sessions", "gauge", "Decode sessions (one per method and sampling settings).", [("", s.sessions)])
        metric("selar_tokens_total", "counter", "Tokens emitted.", [("", s.tokens)])
        metric("selar_soft_steps_total", "counter", "Tokens emitted at soft steps.", [("", s.soft)])
        metric(
            "selar_soft_step_share",
            "gauge",
            "Share of soft steps among the tokens emitted.",
            [("", s.soft / s.tokens if s.tokens else 0.0)],
        )
        metric(
            "selar_tokens_per_second",
            "gauge",
            "Tokens emitted per second over the last ~10 s.",
            [("", float(s.tokens_per_s))],
        )
        metric(
            "selar_faults_total",
            "counter",
            "Decode sessions that faulted, by kind.",
            [('{kind="capacity"}', s.capacity_faults), ('{kind="server"}', s.faults - s.capacity_faults)],
        )
        metric("selar_failed_rows_total", "counter", "Rows failed by faults.", [("", s.failed_rows)])
        metric("selar_healthy", "gauge", "1 when /health answers 200.", [("", int(s.healthy))])
        return "\n".join(out) + "\n"
