"""psycopg 3 against Velocity: connect, introspect, typed rows, transactions, SUBSCRIBE.

Run by tests/clients.rs with VELOCITY_DSN set; exits non-zero on the first mismatch.
"""
import datetime
import decimal
import os
import threading

import psycopg

DSN = os.environ["VELOCITY_DSN"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


with psycopg.connect(DSN, autocommit=True) as conn:
    version = conn.execute("SELECT version()").fetchone()[0]
    check("Velocity" in version, f"version() names Velocity: {version!r}")
    check(conn.info.server_version >= 120000, f"server_version parameter: {conn.info.server_version}")
    conn.execute("SET application_name = 'psycopg-test'")
    check(conn.execute("SHOW application_name").fetchone()[0] == "psycopg-test", "SHOW application_name")
    conn.execute("SET search_path TO public")
    conn.execute("SET TIME ZONE 'UTC'")
    print("tx isolation:", conn.execute("SHOW transaction_isolation").fetchone()[0])
    print("standard_conforming_strings:", conn.execute("SHOW standard_conforming_strings").fetchone()[0])
    print("current_database:", conn.execute("SELECT current_database(), current_schema()").fetchone())

    conn.execute(
        "CREATE TABLE shipments (id BIGINT PRIMARY KEY, qty INT, price NUMERIC(10,2), weight DOUBLE PRECISION,"
        " status TEXT, fragile BOOLEAN, ship_date DATE, created_at TIMESTAMP, updated_at TIMESTAMPTZ)"
    )
    # Parameters travel through the extended protocol (server-side binding).
    conn.execute(
        "INSERT INTO shipments VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (1, 3, decimal.Decimal("12.50"), 2.25, "PLANNED", True, datetime.date(2024, 5, 1),
         datetime.datetime(2024, 5, 1, 8, 30, 0), datetime.datetime(2024, 5, 1, 8, 30, 0, tzinfo=datetime.timezone.utc)),
    )
    conn.execute("INSERT INTO shipments (id, status) VALUES (2, NULL)")
    conn.execute(
        "CREATE MATERIALIZED VIEW per_status AS SELECT status, count(*) AS n, sum(qty) AS qty FROM shipments GROUP BY status"
    )

    rows = conn.execute(
        "SELECT id, qty, price, weight, status, fragile, ship_date, created_at, updated_at FROM shipments ORDER BY id"
    ).fetchall()
    check(len(rows) == 2, f"two rows: {rows}")
    r = rows[0]
    check(r[0] == 1 and isinstance(r[0], int), f"bigint: {r[0]!r}")
    check(r[1] == 3 and isinstance(r[1], int), f"int: {r[1]!r}")
    check(r[2] == decimal.Decimal("12.50"), f"numeric: {r[2]!r}")
    check(r[3] == 2.25 and isinstance(r[3], float), f"double: {r[3]!r}")
    check(r[4] == "PLANNED", f"text: {r[4]!r}")
    check(r[5] is True, f"bool: {r[5]!r}")
    check(r[6] == datetime.date(2024, 5, 1), f"date: {r[6]!r}")
    check(r[7] == datetime.datetime(2024, 5, 1, 8, 30), f"timestamp: {r[7]!r}")
    check(r[8] == datetime.datetime(2024, 5, 1, 8, 30, tzinfo=datetime.timezone.utc), f"timestamptz: {r[8]!r}")
    check(rows[1][1:] == (None,) * 8, f"NULLs: {rows[1]!r}")

    # Binary result format as well as text.
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT id, price, ship_date, fragile FROM shipments WHERE id = %s", (1,))
        check(cur.fetchone() == (1, decimal.Decimal("12.50"), datetime.date(2024, 5, 1), True), "binary row")

    # Column names as Postgres gives them (answers from Postgres 15).
    names = [d.name for d in conn.execute(
        "SELECT count(*), sum(qty), qty + 1, upper(status), CASE WHEN fragile THEN 1 END, qty::bigint, 'x'::text, count(*) AS n"
        " FROM shipments GROUP BY qty, status, fragile").description]
    check(names == ["count", "sum", "?column?", "upper", "case", "qty", "text", "n"], f"column names: {names}")
    names = [d.name for d in conn.execute("SELECT * FROM per_status").description]
    check(names == ["status", "n", "qty"], f"view columns: {names}")
    tables = {r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'").fetchall()}
    check({"shipments", "per_status"} <= tables, f"information_schema.tables: {tables}")

# JSONB and JSON parameters, in text and in binary format; json/jsonb columns come back typed.
from psycopg.types.json import Json, Jsonb

with psycopg.connect(DSN, autocommit=True) as conn:
    conn.execute("CREATE TABLE docs (id INT PRIMARY KEY, body JSONB, raw JSON, label VARCHAR(8))")
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("INSERT INTO docs VALUES (%s, %s, %s, %s)", (int(binary), Jsonb({"a": [1, 2], "b": None}), Json({"c": "x"}), "ok"))
            cur.execute("SELECT body, raw FROM docs WHERE id = %s", (int(binary),))
            check([d.type_code for d in cur.description] == [3802, 114], f"jsonb, json columns ({binary=}): {cur.description}")
            row = cur.fetchone()
            check(row == ({"a": [1, 2], "b": None}, {"c": "x"}), f"JSON values ({binary=}): {row}")
            # jsonb where Postgres 15 says jsonb (OID 3802 in RowDescription), json where it says json.
            cur.execute(
                "SELECT body -> 'a', raw -> 'c', body #> '{a}', '{\"x\": 1}'::jsonb, CAST('[1]' AS JSONB), '{\"y\": 2}'::json,"
                " raw::jsonb, body::json, jsonb_build_object('k', id), json_build_object('k', id), to_jsonb(id), to_json(id)"
                " FROM docs WHERE id = %s",
                (int(binary),),
            )
            oids = [d.type_code for d in cur.description]
            check(oids == [3802, 114, 3802, 3802, 3802, 114, 3802, 114, 3802, 114, 3802, 114], f"json/jsonb result types ({binary=}): {oids}")
            row = cur.fetchone()
            expected = ([1, 2], "x", [1, 2], {"x": 1}, [1], {"y": 2}, {"c": "x"}, {"a": [1, 2], "b": None}, {"k": int(binary)},
                        {"k": int(binary)}, int(binary), int(binary))
            check(row == expected, f"json/jsonb results decoded ({binary=}): {row}")
            cur.execute("SELECT jsonb_agg(id ORDER BY id), json_agg(id ORDER BY id) FROM docs")
            oids = [d.type_code for d in cur.description]
            check(oids == [3802, 114], f"jsonb_agg, json_agg types ({binary=}): {oids}")
    # A materialized view keeps them: on the wire and in pg_attribute.
    conn.execute("CREATE MATERIALIZED VIEW doc_parts AS SELECT id, body -> 'a' AS a, raw -> 'c' AS c, jsonb_build_object('id', id) AS o FROM docs")
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("SELECT a, c, o FROM doc_parts ORDER BY id")
            oids = [d.type_code for d in cur.description]
            check(oids == [3802, 114, 3802], f"matview json/jsonb columns ({binary=}): {oids}")
            rows = cur.fetchall()
            check(rows == [([1, 2], "x", {"id": 0}), ([1, 2], "x", {"id": 1})], f"matview json/jsonb values ({binary=}): {rows}")
    types = [(n, int(t)) for n, t in conn.execute(
        "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = 'doc_parts'::regclass AND attnum > 0 ORDER BY attnum").fetchall()]
    check(types == [("id", 23), ("a", 3802), ("c", 114), ("o", 3802)], f"matview pg_attribute types: {types}")
    types = [(n, int(t), m) for n, t, m in conn.execute(
        "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum > 0 ORDER BY attnum"
    ).fetchall()]
    check(types == [("id", 23, -1), ("body", 3802, -1), ("raw", 114, -1), ("label", 1043, 12)], f"pg_attribute types: {types}")
    # Catalog oid columns are oid (26) on the wire, as in Postgres: psycopg reads numbers.
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("SELECT attrelid, atttypid FROM pg_attribute WHERE attrelid = 'docs'::regclass AND attnum = 1")
            oids = [d.type_code for d in cur.description]
            row = cur.fetchone()
            check(oids == [26, 26] and isinstance(row[0], int) and row[1] == 23, f"attrelid, atttypid as oid ({binary=}): {oids} {row}")
            cur.execute("SELECT relnamespace, reltype FROM pg_class WHERE relname = 'docs'")
            oids = [d.type_code for d in cur.description]
            check(oids == [26, 26] and all(isinstance(v, int) for v in cur.fetchone()), f"relnamespace, reltype as oid ({binary=}): {oids}")
            cur.execute("SELECT indrelid, indexrelid FROM pg_index WHERE indrelid = 'docs'::regclass")
            oids = [d.type_code for d in cur.description]
            check(oids == [26, 26] and all(isinstance(v, int) for v in cur.fetchone()), f"pg_index oids ({binary=}): {oids}")
            cur.execute("SELECT oid, conrelid, connamespace, conindid FROM pg_constraint WHERE conrelid = 'docs'::regclass")
            oids = [d.type_code for d in cur.description]
            check(oids == [26] * 4 and all(isinstance(v, int) for v in cur.fetchone()), f"pg_constraint oids ({binary=}): {oids}")
    # VARCHAR(n) holds n characters (not bytes), as Postgres.
    conn.execute("INSERT INTO docs (id, label) VALUES (2, %s)", ("éééééééé",))
    try:
        conn.execute("INSERT INTO docs (id, label) VALUES (3, %s)", ("123456789",))
        check(False, "a 9-character label fits VARCHAR(8)")
    except psycopg.errors.StringDataRightTruncation as e:
        check(str(e) == "value too long for type character varying(8)", f"22001 message: {e}")
    try:
        conn.execute("UPDATE docs SET label = label || 'x' WHERE id = 2")
        check(False, "UPDATE past VARCHAR(8)")
    except psycopg.errors.StringDataRightTruncation:
        pass
    # Text formats as Postgres prints them.
    with conn.cursor() as cur:
        cur.execute("SELECT CAST(qty AS DOUBLE PRECISION), weight, created_at, updated_at FROM shipments WHERE id = 1")
        text = [cur.pgresult.get_value(0, i).decode() for i in range(4)]
        check(text == ["3", "2.25", "2024-05-01 08:30:00", "2024-05-01 08:30:00+00"], f"text of doubles and timestamps: {text}")

# bytea: Postgres' input syntax in SQL text (hex and escape), bytes as parameters.
with psycopg.connect(DSN, autocommit=True) as conn:
    conn.execute("CREATE TABLE blobs (id INT PRIMARY KEY, b BYTEA)")
    conn.execute("INSERT INTO blobs VALUES (1, '\\x0102'), (2, 'ab\\\\c\\001'), (3, '\\xDEAD beef')")
    conn.execute("INSERT INTO blobs VALUES (%s, %s)", (4, b"\x00\xff"))
    rows = conn.execute("SELECT id, b FROM blobs ORDER BY id").fetchall()
    check(rows == [(1, b"\x01\x02"), (2, b"ab\\c\x01"), (3, b"\xde\xad\xbe\xef"), (4, b"\x00\xff")], f"bytea rows: {rows}")
    try:
        conn.execute("INSERT INTO blobs VALUES (5, '\\x012')")
        check(False, "odd hex digits are refused")
    except psycopg.errors.InvalidTextRepresentation:
        pass

# uuid: a column type, casts, uuid.UUID parameters in text and binary format, 22P02 for a
# malformed one. Values print in Postgres' form whatever form they were written in.
import uuid
with psycopg.connect(DSN, autocommit=True) as conn:
    conn.execute("CREATE TABLE tokens (id UUID PRIMARY KEY, owner TEXT)")
    conn.execute("INSERT INTO tokens VALUES ('A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 'text'), ('{b0eebc999c0b4ef8bb6d6bb9bd380a12}', 'braces')")
    first = uuid.UUID("c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13")
    second = uuid.UUID("00000000-0000-0000-0000-0000000000ff")
    conn.execute("INSERT INTO tokens VALUES (%s, %s)", (first, "param text"))
    with conn.cursor(binary=True) as cur:
        cur.execute("INSERT INTO tokens VALUES (%b, %b)", (second, "param binary"))
        cur.execute("SELECT id, owner FROM tokens WHERE id = %b", (first,))
        check(cur.description[0].type_code == 2950, f"uuid column on the wire (binary): {cur.description}")
        check(cur.fetchall() == [(first, "param text")], "binary uuid parameter and result")
    with conn.cursor() as cur:
        cur.execute("SELECT id, owner FROM tokens ORDER BY id")
        check(cur.description[0].type_code == 2950, f"uuid column on the wire: {cur.description}")
        text = [cur.pgresult.get_value(i, 0).decode() for i in range(4)]
        check(text == ["00000000-0000-0000-0000-0000000000ff", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                       "b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12", "c0eebc99-9c0b-4ef8-bb6d-6bb9bd380a13"], f"uuid text, in order: {text}")
        check(cur.fetchall()[1][0] == uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"), "uuid values")
    row = conn.execute("SELECT 'B0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12'::uuid, owner FROM tokens WHERE id = '{b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12}'::uuid").fetchone()
    check(row == (uuid.UUID("b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12"), "braces"), f"uuid casts: {row}")
    # atttypid comes as regtype text, as in the check of `docs` above.
    types = [(n, int(t)) for n, t in conn.execute(
        "SELECT attname, atttypid FROM pg_attribute WHERE attrelid = 'tokens'::regclass AND attnum > 0 ORDER BY attnum").fetchall()]
    check(types == [("id", 2950), ("owner", 25)], f"pg_attribute uuid: {types}")
    typname = conn.execute("SELECT t.typname FROM pg_attribute a JOIN pg_type t ON a.atttypid = t.oid WHERE a.attrelid = 'tokens'::regclass AND a.attname = 'id'").fetchall()
    check(typname == [("uuid",)], f"pg_type of the uuid column: {typname}")
    for bad in ("INSERT INTO tokens VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1', 'short')", "SELECT 'xyz'::uuid"):
        try:
            conn.execute(bad)
            check(False, f"malformed uuid accepted: {bad}")
        except psycopg.errors.InvalidTextRepresentation as e:
            check("invalid input syntax for type uuid" in str(e), f"22P02 message: {e}")
    check(conn.execute("SELECT count(*) FROM tokens").fetchone()[0] == 4, "the malformed row was not stored")

# Invalid UTF-8 in a query's text (sent as bytes) is refused with 22021, as in Postgres,
# not stored as U+FFFD. Velocity closes the session after it (Postgres keeps it).
with psycopg.connect(DSN, autocommit=True) as conn:
    try:
        conn.execute(b"INSERT INTO tokens VALUES ('d0eebc99-9c0b-4ef8-bb6d-6bb9bd380a14', 'a\xc3\x28b')")
        check(False, "invalid UTF-8 is refused")
    except psycopg.errors.CharacterNotInRepertoire as e:
        check('invalid byte sequence for encoding "UTF8": 0xc3 0x28' in str(e), f"22021 message: {e}")
with psycopg.connect(DSN, autocommit=True) as conn:
    check(conn.execute("SELECT count(*) FROM tokens").fetchone()[0] == 4, "the invalid row was not stored")

# Encodings: UTF8 only. Another client_encoding is refused (0A000), at startup or by SET,
# rather than ignored (text in LATIN1 would be stored as garbage).
with psycopg.connect(DSN, autocommit=True) as conn:
    try:
        conn.execute("SET client_encoding TO 'LATIN1'")
        check(False, "SET client_encoding TO 'LATIN1' is refused")
    except psycopg.errors.FeatureNotSupported as e:
        check("LATIN1" in str(e), f"encoding error names it: {e}")
    check(conn.execute("SHOW client_encoding").fetchone()[0] == "UTF8", "still UTF8")
    conn.execute("SET client_encoding TO 'UTF8'")
with psycopg.connect(DSN + " client_encoding=LATIN1", autocommit=True) as conn:
    try:
        conn.execute("SELECT 1")
        check(False, "a LATIN1 session is refused")
    except psycopg.errors.FeatureNotSupported as e:
        check(str(e) == "conversion between LATIN1 and UTF8 is not supported: Velocity speaks UTF8 only", f"startup encoding: {e}")

# Default psycopg: implicit BEGIN before the first statement, COMMIT on commit().
with psycopg.connect(DSN) as conn:
    conn.execute("INSERT INTO shipments (id, qty, status) VALUES (3, 4, 'PLANNED')")
    conn.commit()
    with conn.transaction():
        conn.execute("INSERT INTO shipments (id, qty, status) VALUES (4, 1, 'LOADED')")
    try:
        with conn.transaction():
            conn.execute("INSERT INTO shipments (id, qty, status) VALUES (5, 1, 'LOST')")
            raise RuntimeError("roll back")
    except RuntimeError:
        pass
    conn.commit()
    rows = conn.execute("SELECT status, n, qty FROM per_status ORDER BY status NULLS LAST").fetchall()
    check(rows == [("LOADED", 1, 1), ("PLANNED", 2, 7), (None, 1, None)], f"per_status after transactions: {rows}")
    conn.rollback()

# SUBSCRIBE through a cursor: DECLARE ... FETCH with a timeout.
with psycopg.connect(DSN, autocommit=True) as conn:
    conn.execute("DECLARE feed CURSOR FOR SUBSCRIBE per_status")
    snapshot = conn.execute("FETCH ALL feed WITH (timeout = '1s')").fetchall()
    check(len(snapshot) == 3, f"snapshot rows: {snapshot}")
    with psycopg.connect(DSN, autocommit=True) as writer:
        writer.execute("INSERT INTO shipments (id, qty, status) VALUES (6, 10, 'LOADED')")
    changes = conn.execute("FETCH ALL feed WITH (timeout = '5s')").fetchall()
    print("cursor changes:", changes)
    diffs = sorted((row[-3], row[1]) for row in changes)
    check(diffs == [("LOADED", -1), ("LOADED", 1)], f"retraction + insertion: {changes}")
    conn.execute("CLOSE feed")

# SUBSCRIBE as COPY: read the snapshot, then a change committed by another connection.
with psycopg.connect(DSN, autocommit=True) as conn:
    got = []
    def writer_later():
        with psycopg.connect(DSN, autocommit=True) as writer:
            writer.execute("INSERT INTO shipments (id, qty, status) VALUES (7, 1, 'DELIVERED')")
    cur = conn.cursor()
    copy_cm = cur.copy("COPY (SUBSCRIBE TO per_status WITH (SNAPSHOT = false)) TO STDOUT")
    copy = copy_cm.__enter__()
    t = threading.Timer(0.5, writer_later)
    t.start()
    buf = b""
    while b"DELIVERED" not in buf:
        data = copy.read()
        check(data, "copy stream ended early")
        buf += bytes(data)
    t.join()
    line = next(l for l in buf.decode().splitlines() if "DELIVERED" in l)
    print("copy line:", line)
    check(line.split("\t")[1] == "1", f"insert diff: {line!r}")
    # A subscription never ends by itself: the subscriber leaves by closing the connection.
    conn.close()

with psycopg.connect(DSN, autocommit=True) as conn:
    check(conn.execute("SELECT count(*) FROM per_status").fetchone()[0] == 4, "server fine after a subscriber left")

print("psycopg: all checks passed")
