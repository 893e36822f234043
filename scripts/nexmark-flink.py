#!/usr/bin/env python3
"""Nexmark q0-q8 through Apache Flink SQL (PyFlink, local, parallelism 1) and through Velocity,
on the same events, and the ratio per query from one run.

    scripts/nexmark-flink.sh [--events N] [--queries q0,q1,...]

(the .sh wrapper installs PyFlink in a venv and builds Velocity). The events are Velocity's
own: `velocity simulate --scenario nexmark --events N --file F` writes the Debezium JSON lines
the generator connector applies; this script turns them into the one-stream shape of Flink's
Nexmark (`event_type` plus a `person`/`auction`/`bid` row, Flink's nexmark DDL) in a JSON-lines
file that Flink's filesystem connector reads. Flink's figure is the job's net runtime (from the
job's start to its end, as Flink reports it: JVM and planning excluded) over all N events; its
sink is `blackhole`. Velocity's figure is `velocity bench nexmark --query qN --events N`: from
`CREATE SOURCE` to the view being complete and durable, every event stored in its table.

The queries follow Flink's nexmark SQL (nexmark-flink/queries), with q5's HOP and q7/q8's
TUMBLE as window table functions and the watermark Flink's nexmark declares (4 s). Velocity's
views are the files in queries/nexmark/ over the same events; q6 is left out on both sides
(Velocity refuses its sliding OVER window).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

SOURCE_DDL = """
CREATE TABLE nexmark_events (
    event_type INT,
    person ROW<id BIGINT, name STRING, email_address STRING, credit_card STRING, city STRING,
               state STRING, date_time TIMESTAMP(3), extra STRING>,
    auction ROW<id BIGINT, item_name STRING, description STRING, initial_bid BIGINT, reserve BIGINT,
                date_time TIMESTAMP(3), expires TIMESTAMP(3), seller BIGINT, category BIGINT, extra STRING>,
    bid ROW<auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
            date_time TIMESTAMP(3), extra STRING>,
    date_time AS CASE WHEN event_type = 0 THEN person.date_time
                      WHEN event_type = 1 THEN auction.date_time
                      ELSE bid.date_time END,
    WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND
) WITH (
    'connector' = 'filesystem',
    'path' = '{path}',
    'format' = 'json',
    'json.timestamp-format.standard' = 'ISO-8601'
)
"""

VIEWS = [
    """CREATE VIEW person AS SELECT person.id, person.name, person.email_address, person.credit_card,
       person.city, person.state, date_time, person.extra FROM nexmark_events WHERE event_type = 0""",
    """CREATE VIEW auction AS SELECT auction.id, auction.item_name, auction.description, auction.initial_bid,
       auction.reserve, date_time, auction.expires, auction.seller, auction.category, auction.extra
       FROM nexmark_events WHERE event_type = 1""",
    """CREATE VIEW bid AS SELECT bid.auction, bid.bidder, bid.price, bid.channel, bid.url, date_time, bid.extra
       FROM nexmark_events WHERE event_type = 2""",
]

# (sink columns, query): Flink's nexmark q0-q8 (q6 left out, as in Velocity).
QUERIES = {
    "q0": ("auction BIGINT, bidder BIGINT, price BIGINT, date_time TIMESTAMP(3)",
           "SELECT auction, bidder, price, date_time FROM bid"),
    "q1": ("auction BIGINT, bidder BIGINT, price DECIMAL(23, 3), date_time TIMESTAMP(3)",
           "SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid"),
    "q2": ("auction BIGINT, price BIGINT",
           "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0"),
    "q3": ("name STRING, city STRING, state STRING, id BIGINT",
           """SELECT P.name, P.city, P.state, A.id FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
              WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca')"""),
    "q4": ("category BIGINT, avg_final BIGINT",
           """SELECT Q.category, AVG(Q.final) FROM (
                  SELECT MAX(B.price) AS final, A.category FROM auction A, bid B
                  WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
                  GROUP BY A.id, A.category) Q
              GROUP BY Q.category"""),
    "q5": ("auction BIGINT, num BIGINT",
           """SELECT AuctionBids.auction, AuctionBids.num FROM (
                  SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
                  FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
                  GROUP BY auction, window_start, window_end) AS AuctionBids
              JOIN (
                  SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM (
                      SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
                      FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
                      GROUP BY auction, window_start, window_end) AS CountBids
                  GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
              ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
                 AND AuctionBids.num >= MaxBids.maxn"""),
    "q7": ("auction BIGINT, price BIGINT, bidder BIGINT, date_time TIMESTAMP(3), extra STRING",
           """SELECT B.auction, B.price, B.bidder, B.date_time, B.extra FROM bid B JOIN (
                  SELECT MAX(price) AS maxprice, window_end AS date_time
                  FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
                  GROUP BY window_start, window_end) B1
              ON B.price = B1.maxprice
              WHERE B.date_time BETWEEN B1.date_time - INTERVAL '10' SECOND AND B1.date_time"""),
    "q8": ("id BIGINT, name STRING, stime TIMESTAMP(3)",
           """SELECT P.id, P.name, P.starttime FROM (
                  SELECT id, name, window_start AS starttime, window_end AS endtime
                  FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
                  GROUP BY id, name, window_start, window_end) P
              JOIN (
                  SELECT seller, window_start AS starttime, window_end AS endtime
                  FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND))
                  GROUP BY seller, window_start, window_end) A
              ON P.id = A.seller AND P.starttime = A.starttime AND P.endtime = A.endtime"""),
}


def flink_events(debezium_path, out_path):
    """Debezium JSON lines (the generator's) -> Flink nexmark's one-stream JSON lines."""
    kinds = {"person": 0, "auction": 1, "bid": 2}
    n = 0
    with open(debezium_path) as src, open(out_path, "w") as out:
        for line in src:
            record = json.loads(line)
            if "status" in record:
                continue
            table = record["source"]["table"]
            row = {"event_type": kinds[table], "person": None, "auction": None, "bid": None}
            row[table] = record["after"]
            out.write(json.dumps(row, separators=(",", ":")))
            out.write("\n")
            n += 1
    return n


def run_flink(query, events_path):
    from pyflink.table import EnvironmentSettings, TableEnvironment

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("parallelism.default", "1")
    conf.set("table.exec.resource.default-parallelism", "1")
    env.execute_sql(SOURCE_DDL.format(path=events_path))
    for view in VIEWS:
        env.execute_sql(view)
    columns, select = QUERIES[query]
    env.execute_sql(f"CREATE TABLE sink ({columns}) WITH ('connector' = 'blackhole')")
    started = time.monotonic()
    result = env.execute_sql(f"INSERT INTO sink {select}")
    job = result.get_job_client().get_job_execution_result().result()
    wall = time.monotonic() - started
    return job.get_net_runtime() / 1000.0, wall


def run_velocity(velocity, query, events):
    out = subprocess.run([velocity, "bench", "nexmark", "--query", query, "--events", str(events)],
                         capture_output=True, text=True, check=True).stdout
    row = next(l for l in out.splitlines() if l.startswith(f"| {query} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # | query | events | events/s | seconds | ...
    return float(cells[3]), "release" if "release build" in out else "debug"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queries", default=",".join(QUERIES))
    parser.add_argument("--velocity", default="target/release/velocity")
    args = parser.parse_args()
    queries = [q for q in args.queries.split(",") if q]
    for q in queries:
        if q not in QUERIES:
            sys.exit(f"no query {q}: one of {', '.join(QUERIES)}")

    work = tempfile.mkdtemp(prefix="nexmark-flink-")
    debezium = os.path.join(work, "nexmark.debezium.jsonl")
    subprocess.run([args.velocity, "simulate", "--scenario", "nexmark", "--events", str(args.events),
                    "--file", debezium], check=True)
    events_dir = os.path.join(work, "events")
    os.mkdir(events_dir)
    n = flink_events(debezium, os.path.join(events_dir, "events.jsonl"))
    print(f"{n} Nexmark events in {work}", file=sys.stderr)

    rows = []
    build = "?"
    for q in queries:
        print(f"{q}: Flink ...", file=sys.stderr)
        flink_secs, flink_wall = run_flink(q, events_dir)
        print(f"{q}: Velocity ...", file=sys.stderr)
        velocity_secs, build = run_velocity(args.velocity, q, n)
        rows.append((q, n / flink_secs, flink_wall, n / velocity_secs))

    print(f"scripts/nexmark-flink.sh --events {args.events} --queries {','.join(queries)}"
          f"   (Velocity {build} build; Flink local, parallelism 1)\n")
    print("| query | events | Flink events/s | Flink job wall s | Velocity events/s | Velocity / Flink |")
    print("|---|---|---|---|---|---|")
    for q, flink_eps, flink_wall, velocity_eps in rows:
        print(f"| {q} | {n} | {flink_eps:,.0f} | {flink_wall:.1f} | {velocity_eps:,.0f} | {velocity_eps / flink_eps:.2f}x |")


if __name__ == "__main__":
    main()
