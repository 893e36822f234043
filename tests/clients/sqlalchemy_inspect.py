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

cols = {c["name"]: c for c in insp.get_columns("orders")}
print("orders columns:", {n: (str(c["type"]), c["nullable"]) for n, c in cols.items()})
check(list(cols) == ["id", "customer", "amount", "placed", "at", "paid"], f"column order: {list(cols)}")
check(isinstance(cols["id"]["type"], sa.BigInteger), f"id type {cols['id']['type']!r}")
check(isinstance(cols["customer"]["type"], (sa.Text, sa.String)), f"customer type {cols['customer']['type']!r}")
check(isinstance(cols["amount"]["type"], sa.Numeric), f"amount type {cols['amount']['type']!r}")
check(isinstance(cols["placed"]["type"], sa.Date), f"placed type {cols['placed']['type']!r}")
check(isinstance(cols["at"]["type"], sa.DateTime), f"at type {cols['at']['type']!r}")
check(isinstance(cols["paid"]["type"], sa.Boolean), f"paid type {cols['paid']['type']!r}")
check(cols["customer"]["nullable"] is False, "customer NOT NULL")

mv_cols = [c["name"] for c in insp.get_columns("revenue")]
print("revenue columns:", mv_cols)
check(mv_cols == ["customer", "total", "orders"], f"view columns: {mv_cols}")

pk = insp.get_pk_constraint("orders")
print("pk:", pk)
print("indexes:", insp.get_indexes("orders"))
print("foreign keys:", insp.get_foreign_keys("orders"))

# Superset previews data with a plain SELECT ... LIMIT.
with engine.connect() as conn:
    rows = conn.execute(text("SELECT customer, total, orders FROM revenue LIMIT 100")).all()
    print("revenue:", rows)
    check([(r[0], float(r[1]), r[2]) for r in rows] == [("acme", 14.75, 2)], f"rows: {rows}")
    # Reflection of a Table object, as Superset's dataset editor does.
    t = sa.Table("orders", sa.MetaData(), autoload_with=conn)
    check([c.name for c in t.columns] == ["id", "customer", "amount", "placed", "at", "paid"], "reflected Table")
    n = conn.execute(sa.select(sa.func.count()).select_from(t).where(t.c.paid.is_(True))).scalar_one()
    check(n == 1, f"count of paid: {n}")

print("sqlalchemy: all checks passed")
