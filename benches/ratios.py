"""One sitting round's ratios against issue 3's targets (used by sitting.sh).

usage: python3 benches/ratios.py OUT_DIR ROUND

Reads OUT_DIR/{full,window256,consume}-ROUND.json (sluice-bench reports) and the
RESULT lines sitting.sh saved in OUT_DIR/{storage,storage-direct,nats}-ROUND.txt, and
prints full speed over the raw append+sync (O_DIRECT, the engine's default data-file
mode, and the buffered backend), the 256 window over NATS R1, and consume over NATS's pull consumer. A
missing input prints "-" for its ratio.
"""

import json
import re
import sys


def field(path, key, phase=None):
    """The number after `key=` on the first RESULT line (of `phase`, if given)."""
    try:
        with open(path) as f:
            for line in f:
                if phase and f"phase={phase}" not in line:
                    continue
                m = re.search(rf"\b{key}=([0-9.]+)", line)
                if m:
                    return float(m.group(1))
    except OSError:
        pass
    return None


def report(out, r, label, key):
    try:
        with open(f"{out}/{label}-{r}.json") as f:
            return json.load(f)[key]
    except (OSError, ValueError, KeyError):
        return None


def ratio(a, b, fmt):
    return "-" if a is None or not b else fmt.format(a / b)


def main():
    out, r = sys.argv[1], sys.argv[2]
    full = report(out, r, "full", "mb_per_sec")
    window = report(out, r, "window256", "msgs_per_sec")
    consume = report(out, r, "consume", "msgs_per_sec")
    nats = f"{out}/nats-{r}.txt"
    print(
        "  ratios  full/raw {} (buffered raw: {}), window256/NATS {}, consume/NATS {}".format(
            ratio(full, field(f"{out}/storage-direct-{r}.txt", "write_MBps"), "{:.1%}"),
            ratio(full, field(f"{out}/storage-{r}.txt", "write_MBps"), "{:.1%}"),
            ratio(window, field(nats, "msgs_per_s", "produce"), "{:.2f}x"),
            ratio(consume, field(nats, "msgs_per_s", "consume"), "{:.2f}x"),
        )
    )


if __name__ == "__main__":
    main()
