"""Runs SQL through the query service's Arrow Flight SQL door with ADBC (adbc-driver-flightsql and
pyarrow), for the tests (query/tests/it/flight.rs) and as an example of a Python client.

Reads a JSON request on stdin:
  {"port": 8083, "token": "TOKEN", "basic": false,
   "queries": [{"sql": "SELECT ... WHERE x = ?", "params": ["a"]}]}
and prints {"results": [{"rows": N, "ipc": "<hex of the Arrow IPC stream>"} or {"error": "..."}]};
without a token (none or empty) the client is anonymous. With "browse": true also the server's info
and every table it lists (GetSqlInfo, GetTables). With "basic": true the client logs in with
Flight's handshake (user and password) instead of sending the bearer token. Parameters make ADBC
prepare the statement and bind them (Flight SQL's prepared statements). With "tls_root": "<PEM
file>" the client connects with TLS (grpc+tls://localhost:PORT) and trusts that certificate;
"scheme": "grpc" forces plain gRPC. A query with "timed": true answers {"rows": N, "seconds": S}
instead, S being the time from the statement's execution to the whole answer fetched as one Arrow
table (`hexpulse bench doors`, door flight-sql-adbc).
"""

import json
import sys
import time

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flight_sql
import pyarrow as pa


def main():
    req = json.load(sys.stdin)
    if req.get("basic"):
        db_kwargs = {"username": "hexpulse", "password": req["token"]}
    elif req.get("token"):
        db_kwargs = {
            adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value: "Bearer "
            + req["token"]
        }
    else:
        db_kwargs = {}  # anonymous
    uri = f"grpc://127.0.0.1:{req['port']}"
    if req.get("tls_root"):
        with open(req["tls_root"]) as f:
            db_kwargs[adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value] = f.read()
        uri = f"{req.get('scheme', 'grpc+tls')}://localhost:{req['port']}"
    results = []
    try:
        conn = flight_sql.connect(uri, db_kwargs=db_kwargs)
    except Exception as e:  # the driver's errors carry the gRPC status in their text
        print(json.dumps({"connect_error": str(e)}))
        return
    report = {}
    if req.get("browse"):
        # What a generic client sees: GetSqlInfo, then GetCatalogs/GetDbSchemas/GetTables.
        info = conn.adbc_get_info()
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        tables = []
        for catalog in objects:
            for schema in catalog["catalog_db_schemas"] or []:
                for table in schema["db_schema_tables"] or []:
                    tables.append(
                        f"{catalog['catalog_name']}.{schema['db_schema_name']}.{table['table_name']}"
                    )
        report["info"] = {k: str(v) for k, v in info.items()}
        report["tables"] = sorted(tables)
    for q in req["queries"]:
        try:
            with conn.cursor() as cur:
                started = time.perf_counter()
                if q.get("params") is not None:
                    cur.execute(q["sql"], q["params"])
                else:
                    cur.execute(q["sql"])
                table = cur.fetch_arrow_table()
                seconds = time.perf_counter() - started
            if q.get("timed"):
                results.append({"rows": table.num_rows, "seconds": seconds})
                continue
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as w:
                w.write_table(table)
            results.append({"rows": table.num_rows, "ipc": sink.getvalue().to_pybytes().hex()})
        except Exception as e:
            results.append({"error": str(e)})
    conn.close()
    report["results"] = results
    print(json.dumps(report))


if __name__ == "__main__":
    sys.exit(main())
