"""What a user would graph, as Prometheus text at ``GET /metrics``: requests by endpoint and
status, prompt tokens served from the cache and computed, answer tokens, the time to first token
(a histogram, from the request's arrival), the queue, and the RAM prompt cache."""

from __future__ import annotations

import bisect
import threading
from collections import Counter

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status)
        self.cached_tokens = 0
        self.computed_tokens = 0
        self.completion_tokens = 0
        self.cancelled = 0
        self._ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self._ttft_sum = 0.0
        self._job_seconds = 0.0  # a moving average: how long a job keeps a worker (Retry-After)

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[endpoint, status] += 1

    def answered(self, *, cached: int, computed: int, completion: int) -> None:
        with self._lock:
            self.cached_tokens += cached
            self.computed_tokens += computed
            self.completion_tokens += completion

    def ttft(self, seconds: float) -> None:
        with self._lock:
            self._ttft_counts[bisect.bisect_left(TTFT_BUCKETS, seconds)] += 1
            self._ttft_sum += seconds

    def job_done(self, seconds: float) -> None:
        with self._lock:
            self._job_seconds = seconds if not self._job_seconds else 0.8 * self._job_seconds + 0.2 * seconds

    def job_cancelled(self) -> None:
        with self._lock:
            self.cancelled += 1

    @property
    def job_seconds(self) -> float:
        return self._job_seconds

    def text(self, gauges: dict[str, tuple[str, float]]) -> str:
        """Prometheus text format; ``gauges``: name -> (help, value) read now."""
        with self._lock:
            out = ["# HELP pc_requests_total HTTP requests answered, by endpoint and status.",
                   "# TYPE pc_requests_total counter"]
            for (endpoint, status), n in sorted(self.requests.items()):
                out.append(f'pc_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
            for name, help_, value in (
                ("pc_prompt_tokens_cached_total", "Prompt tokens whose states came from a cache.", self.cached_tokens),
                ("pc_prompt_tokens_computed_total", "Prompt tokens computed.", self.computed_tokens),
                ("pc_completion_tokens_total", "Answer tokens generated.", self.completion_tokens),
                ("pc_requests_cancelled_total", "Requests whose client went away before the end.", self.cancelled),
            ):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {value}"]
            out += ["# HELP pc_time_to_first_token_seconds From a request's arrival to its first answer token.",
                    "# TYPE pc_time_to_first_token_seconds histogram"]
            total = 0
            for bound, n in zip(TTFT_BUCKETS, self._ttft_counts, strict=False):
                total += n
                out.append(f'pc_time_to_first_token_seconds_bucket{{le="{bound:g}"}} {total}')
            total += self._ttft_counts[-1]
            out += [f'pc_time_to_first_token_seconds_bucket{{le="+Inf"}} {total}',
                    f"pc_time_to_first_token_seconds_sum {self._ttft_sum:.6f}",
                    f"pc_time_to_first_token_seconds_count {total}"]
        for name, (help_, value) in gauges.items():
            out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(out) + "\n"
