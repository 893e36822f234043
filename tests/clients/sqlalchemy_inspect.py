"""SQLAlchemy inspection as Superset uses it: schemas, tables, views, materialized views, columns.

Run by tests/clients.rs with VELOCITY_URL (postgresql+psycopg://...) set.
"""
import os

import sqlalchemy as sa
from sqlalchemy import inspect, text

engine = sa.create_engine(os.environ["VELOCITY_URL"])


def check(cond, what):
    if not cond:
        raise AssertionError(what)


with engine.begin() as conn:
    conn.execute(text("CREATE TABLE orders (id BIGINT PRIMARY KEY, customer TEXT NOT NULL, amount NUMERIC(12,2), placed DATE, at TIMESTAMPTZ, paid BOOLEAN)"))
    conn.execute(text("INSERT INTO orders VALUES (1, 'acme', 10.50, '2024-01-02', '2024-01-02 10:00:00+00', true), (2, 'acme', 4.25, NULL, NULL, false)"))
    conn.execute(text("CREATE MATERIALIZED VIEW revenue AS SELECT customer, sum(amount) AS total, count(*) AS orders FROM orders GROUP BY customer"))

insp = inspect(engine)
print("server version:", engine.dialect.server_version_info)
schemas = insp.get_schema_names()
print("schemas:", schemas)
check("public" in schemas, f"public schema: {schemas}")
tables = insp.get_table_names()
print("tables:", tables)
check("orders" in tables, f"get_table_names: {tables}")
check("revenue" not in tables, f"a materialized view is not a table: {tables}")
matviews = insp.get_materialized_view_names()
print("materialized views:", matviews)
check("revenue" in matviews, f"get_materialized_view_names: {matviews}")
views = insp.get_view_names()
print("views:", views)
check(views == [], f"get_view_names lists the user's plain views only (there are none): {views}")
check(not any(v in tables + matviews for v in ("relations", "sources", "dead_letters")),
      f"velocity_catalog's system tables are not the user's: {tables} {matviews}")

# Column reflection: names, types and nullability, for a table and a materialized view.
def columns(name):
    return [(c["name"], type(c["type"]).__name__, c["nullable"], c["default"]) for c in insp.get_columns(name)]

order_columns = columns("orders")
print("orders columns:", order_columns)
check(order_columns == [
    ("id", "BIGINT", False, None),
    ("customer", "TEXT", False, None),
    ("amount", "NUMERIC", True, None),
    ("placed", "DATE", True, None),
    ("at", "TIMESTAMP", True, None),
    ("paid", "BOOLEAN", True, None),
], f"get_columns(orders): {order_columns}")
check(insp.get_columns("orders")[4]["type"].timezone, "TIMESTAMPTZ reflects with a time zone")
amount = insp.get_columns("orders")[2]["type"]
check((amount.precision, amount.scale) == (12, 2), f"NUMERIC(12,2) reflects its precision and scale: {amount!r}")
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE people (id INT PRIMARY KEY, name VARCHAR(40), prefs JSONB, seen TIMESTAMP(3))"))
people = {c["name"]: c["type"] for c in insp.get_columns("people")}
print("people columns:", people)
check(type(people["name"]).__name__ == "VARCHAR" and people["name"].length == 40, f"VARCHAR(40): {people['name']!r}")
check(type(people["prefs"]).__name__ == "JSONB", f"JSONB: {people['prefs']!r}")
check(people["seen"].precision == 3, f"TIMESTAMP(3): {people['seen']!r}")
revenue_columns = columns("revenue")
print("revenue columns:", revenue_columns)
check([(n, t) for n, t, _, _ in revenue_columns] == [("customer", "TEXT"), ("total", "NUMERIC"), ("orders", "BIGINT")],
      f"get_columns(revenue): {revenue_columns}")
# As on Postgres, a materialized view's columns are nullable and tables use the default access
# method (heap), so SQLAlchemy reflects no postgresql_using.
check(all(nullable for _, _, nullable, _ in revenue_columns), f"materialized view columns are nullable: {revenue_columns}")
check(insp.get_table_options("orders") == {} and insp.get_table_options("revenue") == {},
      f"get_table_options: {insp.get_table_options('orders')} {insp.get_table_options('revenue')}")

# Keys and indexes, through pg_constraint/pg_index (as ORMs and Superset reflect them).
pk = insp.get_pk_constraint("orders")
print("orders primary key:", pk)
check(pk["name"] == "orders_pkey" and pk["constrained_columns"] == ["id"], f"get_pk_constraint(orders): {pk}")
with engine.begin() as conn:
    conn.execute(text("CREATE TABLE lines (order_id BIGINT, line INT, sku TEXT, PRIMARY KEY (order_id, line))"))
pk = insp.get_pk_constraint("lines")
print("lines primary key:", pk)
check(pk["constrained_columns"] == ["order_id", "line"], f"a composite key keeps its order: {pk}")
check(insp.get_pk_constraint("revenue")["constrained_columns"] == [], "a materialized view has no primary key")
# The primary key's index is not listed by get_indexes (as on Postgres); there are no others.
check(insp.get_indexes("orders") == [], f"get_indexes(orders): {insp.get_indexes('orders')}")
check(insp.get_unique_constraints("orders") == [], "get_unique_constraints(orders)")
check(insp.get_foreign_keys("orders") == [], "get_foreign_keys(orders)")
view_def = insp.get_view_definition("revenue")
print("revenue definition:", view_def)
check(view_def is not None and "GROUP BY customer" in view_def and "sum(amount)" in view_def, f"get_view_definition: {view_def}")

# Table autoload, as ORMs and pandas reflect a table before reading it.
orders = sa.Table("orders", sa.MetaData(), autoload_with=engine)
check([c.name for c in orders.primary_key.columns] == ["id"], f"autoloaded key: {orders.primary_key}")
check([c.name for c in orders.columns] == ["id", "customer", "amount", "placed", "at", "paid"], f"autoloaded columns: {orders.columns}")
revenue = sa.Table("revenue", sa.MetaData(), autoload_with=engine)
check([c.name for c in revenue.columns] == ["customer", "total", "orders"], f"autoloaded view: {revenue.columns}")
with engine.connect() as conn:
    n = conn.execute(sa.select(sa.func.count()).select_from(orders).where(orders.c.customer == "acme")).scalar_one()
    check(n == 2, f"query over the autoloaded table: {n}")

import pandas

frame = pandas.read_sql_table("orders", engine)
print("pandas orders:", frame.to_dict("records"))
check(list(frame.columns) == ["id", "customer", "amount", "placed", "at", "paid"] and sorted(frame["id"]) == [1, 2],
      f"read_sql_table(orders): {frame}")
frame = pandas.read_sql_table("revenue", engine)
print("pandas revenue:", frame.to_dict("records"))
check(frame.to_dict("records") == [{"customer": "acme", "total": 14.75, "orders": 2}], f"read_sql_table(revenue): {frame}")

# Superset previews data with a plain SELECT ... LIMIT.
with engine.connect() as conn:
    rows = conn.execute(text("SELECT customer, total, orders FROM revenue LIMIT 100")).all()
    print("revenue:", rows)
    check([(r[0], float(r[1]), r[2]) for r in rows] == [("acme", 14.75, 2)], f"rows: {rows}")
    cols = conn.execute(text(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_name = :t ORDER BY ordinal_position"), {"t": "orders"}).all()
    print("orders columns:", cols)
    check([c[0] for c in cols] == ["id", "customer", "amount", "placed", "at", "paid"], f"columns: {cols}")
    check(cols[1][2] == "NO", f"customer NOT NULL: {cols[1]}")
    # A Core query over a hand-declared Table, as Superset's SQL Lab builds them.
    t = sa.Table("orders", sa.MetaData(), sa.Column("id", sa.BigInteger), sa.Column("paid", sa.Boolean))
    n = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.paid.is_(True))).scalar_one()
    check(n == 1, f"count of paid: {n}")

print("sqlalchemy: all checks passed")
