#!/usr/bin/env python3
"""Where a hub's `broadcast` call spends its time, from the hub's system calls.

Reads `perf script` output of `raw_syscalls:sys_enter` and `raw_syscalls:sys_exit`
events recorded on the hub while `volley bench-hub` publishes with `broadcast` (several
channels per call, parked clients, one subscriber each), and prints medians over the
calls found: from reading the request (a `recvfrom` of more than 1,000 bytes) to the
first delivery's `sendto`, the time in each `sendto` (the kernel's), the time between
two `sendto`s (the hub's own code per delivery), and from the request to the 50th
`sendto` (what a call's median delivery waits for). Linux (x86_64 system call
numbers); Python 3 standard library only.

    volley serve --config hub.toml &                   # on core 0 (taskset -c 0)
    volley bench-hub http://127.0.0.1:8000 -c 10000 --hold 7 --rates 30000 \\
        --batches 100 ...                               # on core 1 (taskset -c 1)
    perf record -e raw_syscalls:sys_enter,raw_syscalls:sys_exit -p HUB_PID -- sleep 2
    perf script > trace.txt
    python3 bench/send-gaps.py trace.txt
"""

import re
import statistics
import sys

RECVFROM, SENDTO, EPOLL_WAIT = 45, 44, 232
EVENT = re.compile(r"\]\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit): NR (\d+) (.*)")


def events(lines):
    """(time in µs, "enter" or "exit", system call number, the rest of the line)."""
    for line in lines:
        m = EVENT.search(line)
        if m:
            yield float(m.group(1)) * 1e6, m.group(2), int(m.group(3)), m.group(4)


def calls(evs, least=90):
    """Per call of at least `least` deliveries: (request → first send, each send's time,
    the gap between sends, request → 50th send), each in µs."""
    out = []
    i = 0
    while i < len(evs):
        t, kind, nr, rest = evs[i]
        if kind == "exit" and nr == RECVFROM and int(rest.split("=")[1]) > 1000:
            sends, in_send, gaps = [], [], []
            entered = last_exit = None
            j = i + 1
            # A call's deliveries: the sends until the thread waits again.
            while j < len(evs) and not (evs[j][1] == "enter" and evs[j][2] == EPOLL_WAIT):
                tt, k, n, _ = evs[j]
                if n == SENDTO and k == "enter":
                    if last_exit is not None:
                        gaps.append(tt - last_exit)
                    sends.append(tt)
                    entered = tt
                elif n == SENDTO and k == "exit" and entered is not None:
                    in_send.append(tt - entered)
                    last_exit = tt
                j += 1
            if len(sends) >= least and gaps and in_send:
                out.append((sends[0] - t, statistics.mean(in_send), statistics.mean(gaps), sends[49] - t))
            i = j
            continue
        i += 1
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        found = calls(list(events(f)))
    if not found:
        sys.exit("no broadcast call with 90 sends or more in the trace")
    print(f"{len(found)} calls; medians:")
    names = ["request → first send", "in each send", "between two sends", "request → 50th send"]
    for k, name in enumerate(names):
        print(f"  {name}: {statistics.median(c[k] for c in found):.1f} µs")


if __name__ == "__main__":
    main()
