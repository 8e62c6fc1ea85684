"""Runs SQL through the query service's PostgreSQL door with psycopg, for the tests
(query/tests/it/pg.rs) and as an example of a Python client.

Reads a JSON request on stdin:
  {"port": 5433, "user": "planner", "password": "TOKEN", "autocommit": false,
   "queries": [{"sql": "SELECT ... WHERE x = %s", "params": ["a"], "prepare": true,
                "cancel_after": 0.5}]}
and prints {"results": [{"columns": [...], "rows": [[...]]} or {"error": {"sqlstate", "message"}}]},
or {"connect_error": {...}} when the login fails. psycopg uses the extended query protocol: each
statement is parsed, described, bound and executed (with "prepare": true, as a named statement).
Without autocommit, psycopg opens a transaction (BEGIN) first, as an application would.
"""

import json
import sys
import threading

import psycopg


def value(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, memoryview)):
        return bytes(v).hex()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def error(e):
    return {"sqlstate": getattr(e, "sqlstate", None), "message": str(e)}


def main():
    req = json.load(sys.stdin)
    try:
        conn = psycopg.connect(
            host="127.0.0.1",
            port=req["port"],
            user=req.get("user", "hexpulse"),
            password=req["password"],
            dbname="hexpulse",
            autocommit=req.get("autocommit", False),
            connect_timeout=10,
        )
    except psycopg.Error as e:
        print(json.dumps({"connect_error": error(e)}))
        return
    results = []
    for q in req["queries"]:
        timer = None
        if q.get("cancel_after"):
            timer = threading.Timer(q["cancel_after"], conn.cancel)
            timer.start()
        try:
            with conn.cursor() as cur:
                cur.execute(q["sql"], q.get("params"), prepare=q.get("prepare"))
                if cur.description is None:
                    results.append({"columns": [], "rows": []})
                else:
                    results.append(
                        {
                            "columns": [d.name for d in cur.description],
                            "rows": [[value(v) for v in row] for row in cur.fetchall()],
                        }
                    )
        except psycopg.Error as e:
            results.append({"error": error(e)})
            if not conn.autocommit:
                conn.rollback()
        finally:
            if timer is not None:
                timer.cancel()
    if not conn.autocommit:
        conn.commit()
    conn.close()
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    sys.exit(main())
