"""Adds Tandem as a shipper to a scratch copy of ../shared/bench/logship/run.py (idempotent), and
the shipper's kernel CPU seconds (`shipper_sys_s`) to each result.

Usage: python3 add_tandem.py RUN_PY    (TANDEM_BIN names the binary when run.py runs)
"""
import sys

path = sys.argv[1]
s = open(path).read()
if 'name == "tandem"' not in s:
    edits = [
        ('    elif name == "filebeat":',
         '    elif name == "tandem":\n'
         '        cmd = [TANDEM_BIN, "run", "-c", conf]\n'
         '        env.setdefault("TANDEM_LOG", "info")\n'
         '    elif name == "filebeat":'),
        ('FILEBEAT_HOME = os.environ.get(',
         'TANDEM_BIN = os.environ.get("TANDEM_BIN", "tandem")\nFILEBEAT_HOME = os.environ.get('),
        ('    ext = "yml" if shipper == "filebeat" else "conf"',
         '    ext = {"filebeat": "yml", "tandem": "yaml"}.get(shipper, "conf")'),
    ]
    # Kernel time apart (the file sink's page-cache writes dominate it and vary with the
    # machine's memory state): the shipper's system seconds, summed over its processes.
    edits += [
        ('        cpu = (int(fields[11]) + int(fields[12])) / TCK\n',
         '        cpu = (int(fields[11]) + int(fields[12])) / TCK\n'
         '        SYS_LAST[pid] = int(fields[12]) / TCK\n'),
        ('LIVE = []', 'SYS_LAST = {}  # pid -> system CPU seconds at its last sample\nLIVE = []'),
        ('    print(json.dumps(res))\n',
         '    res["shipper_sys_s"] = round(sum(SYS_LAST.values()), 2)\n'
         '    print(json.dumps(res))\n'),
    ]
    for old, new in edits:
        if old not in s:
            sys.exit(f"run.py changed: cannot find {old!r}")
        s = s.replace(old, new, 1)
    open(path, "w").write(s)
