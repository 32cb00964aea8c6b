"""A current ClickHouse (chdb's embedded 26.x) for the monitor-fleet tests, driven over stdin and stdout.

`monitor_fleet::servers::Chdb` starts this with the Python of `.tools/venv` (`cargo xtask test` installs chdb
there) and a data directory (its first argument, a temporary one). It runs one chdb Session with its data
there (so MergeTree and ReplacingMergeTree tables and FINAL work as on a server), prints one line `{"version": "26..."}` when it is
ready, then answers each request line:

    {"statement": "SELECT ... FORMAT JSONEachRow", "data": "", "settings": [["name", "value"], ...]}

with one line `{"answer": TEXT}` (ClickHouse's output, in the format the statement asks for) or
`{"error": TEXT}`. `data` follows the statement, as the rows of an INSERT ... FORMAT JSONEachRow (what the
HTTP interface takes as the body). The settings hold for that statement only, as the HTTP interface's URL
parameters do. It exits when its stdin closes.
"""

import json
import sys

try:
    from chdb import session
except ImportError as e:
    sys.stderr.write(f"chdb is not installed for {sys.executable}: {e}\n")
    sys.exit(3)


def literal(value):
    """A setting's value as SQL: a number as it is, anything else as a string literal."""
    if value.lstrip("-").isdigit():
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def main():
    db = session.Session(sys.argv[1])
    version = str(db.query("SELECT version()", "CSV")).strip().strip('"')
    print(json.dumps({"version": version}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        statement = request["statement"]
        if request.get("data"):
            statement += "\n" + request["data"]
        settings = request.get("settings", [])
        try:
            for name, value in settings:
                db.query(f"SET {name} = {literal(value)}")
            answer = {"answer": str(db.query(statement))}
        except Exception as e:  # chdb's errors are ClickHouse's exceptions, with its code and text
            answer = {"error": str(e).strip()}
        finally:
            for name, _ in settings:
                db.query(f"SET {name} = DEFAULT")
        print(json.dumps(answer), flush=True)
    db.close()


if __name__ == "__main__":
    main()
