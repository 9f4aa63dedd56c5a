"""Process-local counters and a latency histogram, rendered as Prometheus text (``/metrics``)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass
class Histogram:
    buckets: tuple[float, ...] = BUCKETS
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.buckets) + 1:
            self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def render(self, name: str) -> list[str]:
        out, acc = [], 0
        for le, c in zip(self.buckets, self.counts, strict=False):
            acc += c
            out.append(f'{name}_bucket{{le="{le}"}} {acc}')
        out.append(f'{name}_bucket{{le="+Inf"}} {self.n}')
        out += [f"{name}_sum {self.total:.6f}", f"{name}_count {self.n}"]
        return out


@dataclass
class Metrics:
    sockjs_sessions: int = 0
    messages_in: int = 0
    messages_out: int = 0
    errors_sent: int = 0
    logins_ok: int = 0
    logins_failed: int = 0
    logins_limited: int = 0
    saves: int = 0
    bad_frames: int = 0  # SockJS frames that were not JSON (connection dropped)
    accept_refused: int = 0  # connections reset at the descriptor limit
    requests_limited: int = 0  # live requests refused by a rate limit or a full queue
    body_refused: int = 0  # HTTP bodies refused before being read (too large)
    execute: Histogram = field(default_factory=Histogram)

    def render(self, extra: dict[str, float], histograms: dict[str, Histogram] | None = None) -> str:
        lines = [
            "# TYPE sagews_sockjs_sessions gauge",
            f"sagews_sockjs_sessions {self.sockjs_sessions}",
            "# TYPE sagews_messages_in_total counter",
            f"sagews_messages_in_total {self.messages_in}",
            "# TYPE sagews_messages_out_total counter",
            f"sagews_messages_out_total {self.messages_out}",
            "# TYPE sagews_errors_sent_total counter",
            f"sagews_errors_sent_total {self.errors_sent}",
            "# TYPE sagews_logins_total counter",
            f'sagews_logins_total{{result="ok"}} {self.logins_ok}',
            f'sagews_logins_total{{result="failed"}} {self.logins_failed}',
            f'sagews_logins_total{{result="rate_limited"}} {self.logins_limited}',
            "# TYPE sagews_saves_total counter",
            f"sagews_saves_total {self.saves}",
            "# TYPE sagews_bad_frames_total counter",
            f"sagews_bad_frames_total {self.bad_frames}",
            "# TYPE sagews_accept_refused_total counter",
            f"sagews_accept_refused_total {self.accept_refused}",
            "# TYPE sagews_requests_limited_total counter",
            f"sagews_requests_limited_total {self.requests_limited}",
            "# TYPE sagews_bodies_refused_total counter",
            f"sagews_bodies_refused_total {self.body_refused}",
            "# TYPE sagews_execute_seconds histogram",
            *self.execute.render("sagews_execute_seconds"),
        ]
        for name, h in (histograms or {}).items():
            lines += [f"# TYPE {name} histogram", *h.render(name)]
        for name, value in sorted(extra.items()):
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {value:g}")
        return "\n".join(lines) + "\n"
