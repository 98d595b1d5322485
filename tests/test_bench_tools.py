"""The parsers of the comparison benchmark's load generators, on output they really
printed: wrk (with ``--latency``, and with the group-fetch script's counters) and
``redis-benchmark --csv``."""

from __future__ import annotations

import pytest

from bench.redis_bench import parse_csv
from bench.wrk import parse_wrk

# wrk 4.1.0, bench/wrk_request.lua, single-record JSON posts to the bare aiohttp echo.
WRK_ECHO = """\
Running 3s test @ http://127.0.0.1:46697/echo
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.19ms    3.11ms  56.96ms   86.93%
    Req/Sec     8.30k     3.45k   21.11k    65.57%
  Latency Distribution
     50%    3.05ms
     75%    5.00ms
     90%    7.79ms
     99%   15.22ms
  50523 requests in 3.10s, 7.47MB read
Requests/sec:  16281.07
Transfer/sec:      2.41MB
"""

# The same without a body: the echo answers 400 to every request.
WRK_REFUSED = """\
Running 2s test @ http://127.0.0.1:46697/echo
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     5.43ms    6.55ms  77.24ms   91.11%
    Req/Sec     7.83k     2.92k   12.80k    57.50%
  Latency Distribution
     50%    3.16ms
     75%    5.24ms
     90%   11.25ms
     99%   37.38ms
  31293 requests in 2.01s, 5.22MB read
  Non-2xx or 3xx responses: 31293
Requests/sec:  15582.77
Transfer/sec:      2.60MB
"""

# bench/wrk_group_fetch.lua against eventbus: its done() adds the "bench" lines.
WRK_FETCH = """\
Running 2s test @ http://127.0.0.1:32909
  4 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.66ms    8.34ms  55.44ms   75.71%
    Req/Sec    65.55     24.66   150.00     71.25%
  Latency Distribution
     50%   12.04ms
     75%   18.24ms
     90%   26.33ms
     99%   43.64ms
  534 requests in 2.06s, 536.46MB read
Requests/sec:    259.69
Transfer/sec:    260.89MB
bench answer_bytes 562331904
bench empty_answers 0
"""

# A server that accepts connections and closes them at once.
WRK_CLOSED = """\
Running 1s test @ http://127.0.0.1:59035/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 1.10s, 0.00B read
  Socket errors: connect 0, read 22952, write 0, timeout 0
Requests/sec:      0.00
Transfer/sec:       0.00B
"""

# redis-benchmark 7.0.15 --csv: -c 4, XRANGE of 1000 entries; and -c 64, XADD of a value
# with a comma and quotes, which it prints in the command's column unescaped.
REDIS_XRANGE = """\
"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"XRANGE s - + COUNT 1000","287.55","5.553","0.512","3.967","14.503","23.855","61.247"

"""
REDIS_XADD = """\
"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"XADD s1 * v a,b "c"","17241.38","3.632","0.424","1.687","11.935","16.479","16.591"
"""


def test_wrk_summary_latency_and_rate() -> None:
    run = parse_wrk(WRK_ECHO)
    assert run.requests == 50523
    assert run.seconds == pytest.approx(3.10)
    assert run.rate == pytest.approx(16298, rel=1e-3)
    assert run.bytes_read == round(7.47 * 2**20)
    assert (run.p50_ms, run.p99_ms) == (pytest.approx(3.05), pytest.approx(15.22))
    assert run.errors == 0
    assert run.counters == {}


def test_wrk_answers_other_than_2xx_are_errors() -> None:
    run = parse_wrk(WRK_REFUSED)
    assert run.requests == 31293
    assert run.errors == 31293


def test_wrk_socket_errors_and_microseconds() -> None:
    run = parse_wrk(WRK_CLOSED)
    assert (run.requests, run.bytes_read) == (0, 0)
    assert run.errors == 22952
    assert run.p99_ms == 0.0
    assert run.rate == 0.0


def test_wrk_script_counters() -> None:
    run = parse_wrk(WRK_FETCH)
    assert run.requests == 534
    assert run.bytes_read == round(536.46 * 2**20)
    assert run.counters == {"answer_bytes": 562331904, "empty_answers": 0}


def test_wrk_output_without_a_summary_is_refused() -> None:
    with pytest.raises(ValueError, match="no summary"):
        parse_wrk("unable to connect to 127.0.0.1:9 Connection refused\n")


def test_redis_benchmark_csv() -> None:
    run = parse_csv(REDIS_XRANGE)
    assert run.rate == pytest.approx(287.55)
    assert (run.p50_ms, run.p99_ms) == (pytest.approx(3.967), pytest.approx(23.855))


def test_redis_benchmark_csv_with_quotes_and_commas_in_the_command() -> None:
    run = parse_csv(REDIS_XADD)
    assert run.rate == pytest.approx(17241.38)
    assert run.p99_ms == pytest.approx(16.479)


def test_redis_benchmark_output_without_a_result_is_refused() -> None:
    with pytest.raises(ValueError, match="no result"):
        parse_csv("Could not connect to Redis at 127.0.0.1:1: Connection refused\n")
