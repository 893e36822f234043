// pgjdbc against Velocity: DatabaseMetaData, typed rows, transactions, SUBSCRIBE via a cursor.
// Run by tests/clients.rs: java -cp /usr/share/java/postgresql.jar JdbcTest.java URL USER
import java.math.BigDecimal;
import java.sql.*;
import java.util.*;

public class JdbcTest {
    static void check(boolean cond, String what) {
        if (!cond) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        String url = args[0];
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        if (args.length > 2) props.setProperty("password", args[2]);
        try (Connection conn = DriverManager.getConnection(url, props)) {
            DatabaseMetaData md = conn.getMetaData();
            System.out.println("product: " + md.getDatabaseProductName() + " " + md.getDatabaseProductVersion());
            try (Statement st = conn.createStatement()) {
                try (ResultSet rs = st.executeQuery("SELECT version()")) {
                    rs.next();
                    check(rs.getString(1).contains("Velocity"), "version(): " + rs.getString(1));
                }
                st.execute("CREATE TABLE parcels (id BIGINT PRIMARY KEY, pieces INT, cost NUMERIC(10,2), kg DOUBLE PRECISION,"
                    + " dest TEXT, express BOOLEAN, due DATE, scanned TIMESTAMP, scanned_tz TIMESTAMPTZ)");
                st.execute("CREATE MATERIALIZED VIEW per_dest AS SELECT dest, count(*) AS n, sum(kg) AS kg FROM parcels GROUP BY dest");
            }
            try (PreparedStatement ps = conn.prepareStatement("INSERT INTO parcels VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")) {
                ps.setLong(1, 1);
                ps.setInt(2, 2);
                ps.setBigDecimal(3, new BigDecimal("9.99"));
                ps.setDouble(4, 1.5);
                ps.setString(5, "Lyon");
                ps.setBoolean(6, true);
                ps.setDate(7, java.sql.Date.valueOf("2024-06-01"));
                ps.setTimestamp(8, Timestamp.valueOf("2024-06-01 12:00:00"));
                ps.setObject(9, java.time.OffsetDateTime.parse("2024-06-01T12:00:00Z"));
                check(ps.executeUpdate() == 1, "insert count");
            }
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO parcels (id, pieces) VALUES (2, NULL)");
            }

            // Transactions: autocommit off makes pgjdbc send BEGIN implicitly.
            conn.setAutoCommit(false);
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO parcels (id, dest, kg) VALUES (3, 'Lyon', 2.5)");
            }
            conn.commit();
            try (Statement st = conn.createStatement()) {
                st.executeUpdate("INSERT INTO parcels (id, dest, kg) VALUES (4, 'Oslo', 1.0)");
            }
            conn.rollback();
            conn.setAutoCommit(true);

            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT * FROM parcels ORDER BY id")) {
                check(rs.next(), "row 1");
                check(rs.getLong("id") == 1, "bigint");
                check(rs.getInt("pieces") == 2, "int");
                check(rs.getBigDecimal("cost").compareTo(new BigDecimal("9.99")) == 0, "numeric " + rs.getBigDecimal("cost"));
                check(rs.getDouble("kg") == 1.5, "double");
                check(rs.getString("dest").equals("Lyon"), "text");
                check(rs.getBoolean("express"), "bool");
                check(rs.getDate("due").toString().equals("2024-06-01"), "date " + rs.getDate("due"));
                check(rs.getTimestamp("scanned").equals(Timestamp.valueOf("2024-06-01 12:00:00")), "timestamp " + rs.getTimestamp("scanned"));
                java.time.OffsetDateTime tz = rs.getObject("scanned_tz", java.time.OffsetDateTime.class);
                check(tz.toInstant().equals(java.time.Instant.parse("2024-06-01T12:00:00Z")), "timestamptz " + tz);
                ResultSetMetaData rsmd = rs.getMetaData();
                List<String> types = new ArrayList<>();
                for (int i = 1; i <= rsmd.getColumnCount(); i++) types.add(rsmd.getColumnTypeName(i));
                System.out.println("result types: " + types);
                check(rs.next(), "row 2");
                check(rs.getObject("pieces") == null && rs.getObject("dest") == null && rs.getObject("scanned_tz") == null, "NULLs");
                check(rs.next() && rs.getLong("id") == 3, "committed row 3");
                check(!rs.next(), "rolled back row 4 is absent");
            }

            // Type modifiers reach the driver: RowDescription carries numeric(10,2)'s typmod.
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT cost, dest FROM parcels")) {
                ResultSetMetaData rsmd = rs.getMetaData();
                System.out.println("cost: precision " + rsmd.getPrecision(1) + ", scale " + rsmd.getScale(1));
                check(rsmd.getScale(1) == 2 && rsmd.getPrecision(1) == 10, "numeric(10,2) scale/precision: " + rsmd.getScale(1) + "/" + rsmd.getPrecision(1));
            }

            // RowDescription carries the table oid and column number of a column read straight
            // from a table or materialized view; pgjdbc resolves them through pg_class and
            // pg_attribute. An expression column has none (""), as with Postgres.
            try (Statement st = conn.createStatement(); ResultSet rs = st.executeQuery("SELECT id, dest, id + 1 AS next FROM parcels")) {
                ResultSetMetaData rsmd = rs.getMetaData();
                org.postgresql.PGResultSetMetaData pg = rsmd.unwrap(org.postgresql.PGResultSetMetaData.class);
                String seen = rsmd.getTableName(1) + "." + pg.getBaseColumnName(1) + ", " + rsmd.getTableName(2) + "." + pg.getBaseColumnName(2)
                    + ", '" + rsmd.getTableName(3) + "', schema " + pg.getBaseSchemaName(2);
                System.out.println("table names: " + seen);
                check(seen.equals("parcels.id, parcels.dest, '', schema public"), "getTableName/getBaseColumnName: " + seen);
                check(rsmd.isNullable(1) == ResultSetMetaData.columnNoNulls && rsmd.isNullable(2) == ResultSetMetaData.columnNullable,
                    "isNullable from pg_attribute: " + rsmd.isNullable(1) + "/" + rsmd.isNullable(2));
            }
            try (PreparedStatement ps = conn.prepareStatement("SELECT n, dest FROM per_dest WHERE dest = ?")) {
                ps.setString(1, "Lyon");
                try (ResultSet rs = ps.executeQuery()) {
                    ResultSetMetaData rsmd = rs.getMetaData();
                    String seen = rsmd.getTableName(1) + "." + rsmd.unwrap(org.postgresql.PGResultSetMetaData.class).getBaseColumnName(1);
                    check(seen.equals("per_dest.n"), "getTableName of a materialized view column: " + seen);
                }
            }

            // DatabaseMetaData as IDEs and BI tools call it.
            List<String> tables = new ArrayList<>();
            try (ResultSet rs = md.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (rs.next()) tables.add(rs.getString("TABLE_NAME"));
            }
            System.out.println("tables: " + tables);
            check(tables.contains("parcels"), "getTables TABLE: " + tables);
            Map<String, String> kinds = new TreeMap<>();
            try (ResultSet rs = md.getTables(null, "public", "%", null)) {
                while (rs.next()) kinds.put(rs.getString("TABLE_NAME"), rs.getString("TABLE_TYPE"));
            }
            System.out.println("all relations: " + kinds);
            check("MATERIALIZED VIEW".equals(kinds.get("per_dest")), "per_dest is a MATERIALIZED VIEW: " + kinds);
            List<String> cols = new ArrayList<>();
            try (ResultSet rs = md.getColumns(null, "public", "parcels", "%")) {
                while (rs.next()) cols.add(rs.getString("COLUMN_NAME") + ":" + rs.getString("TYPE_NAME"));
            }
            System.out.println("columns: " + cols);
            check(cols.size() == 9 && cols.get(0).equals("id:int8") && cols.get(4).equals("dest:text"), "getColumns: " + cols);
            try (ResultSet rs = md.getColumns(null, "public", "parcels", "cost")) {
                check(rs.next() && rs.getInt("COLUMN_SIZE") == 10 && rs.getInt("DECIMAL_DIGITS") == 2,
                    "getColumns(cost) size/digits: " + rs.getInt("COLUMN_SIZE") + "/" + rs.getInt("DECIMAL_DIGITS"));
            }
            // Keys, as DBeaver's and DataGrip's navigators and ORMs read them.
            try (Statement st = conn.createStatement()) {
                st.execute("CREATE TABLE legs (trip TEXT, seq INT, km INT, PRIMARY KEY (trip, seq))");
            }
            List<String> pk = new ArrayList<>();
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "legs")) {
                while (rs.next()) pk.add(rs.getString("COLUMN_NAME") + "#" + rs.getInt("KEY_SEQ") + "@" + rs.getString("PK_NAME"));
            }
            System.out.println("primary key: " + pk);
            check(pk.equals(List.of("trip#1@legs_pkey", "seq#2@legs_pkey")), "getPrimaryKeys(legs): " + pk);
            List<String> idx = new ArrayList<>();
            try (ResultSet rs = md.getIndexInfo(null, "public", "legs", false, false)) {
                while (rs.next()) {
                    idx.add(rs.getString("INDEX_NAME") + ":" + rs.getString("COLUMN_NAME") + ":" + rs.getInt("ORDINAL_POSITION")
                        + (rs.getBoolean("NON_UNIQUE") ? ":non-unique" : ":unique"));
                }
            }
            System.out.println("index info: " + idx);
            check(idx.equals(List.of("legs_pkey:trip:1:unique", "legs_pkey:seq:2:unique")), "getIndexInfo(legs): " + idx);
            // Velocity has no foreign keys: the calls answer (pg_settings has max_index_keys) with no rows.
            try (ResultSet rs = md.getImportedKeys(null, "public", "legs")) {
                check(!rs.next(), "getImportedKeys(legs) is empty");
            }
            try (ResultSet rs = md.getExportedKeys(null, "public", "legs")) {
                check(!rs.next(), "getExportedKeys(legs) is empty");
            }
            Map<String, Integer> types = new TreeMap<>();
            try (ResultSet rs = md.getTypeInfo()) {
                while (rs.next()) types.put(rs.getString("TYPE_NAME"), rs.getInt("DATA_TYPE"));
            }
            System.out.println("getTypeInfo: " + types.size() + " types");
            check(types.get("int8") == java.sql.Types.BIGINT && types.get("text") == java.sql.Types.VARCHAR
                && types.get("numeric") == java.sql.Types.NUMERIC && types.get("timestamptz") == java.sql.Types.TIMESTAMP
                && types.get("_int4") == java.sql.Types.ARRAY, "getTypeInfo: " + types);
            try (ResultSet rs = md.getPrimaryKeys(null, "public", "per_dest")) {
                check(!rs.next(), "a materialized view without a key has no primary key");
            }
            try (ResultSet rs = md.getSchemas()) {
                List<String> schemas = new ArrayList<>();
                while (rs.next()) schemas.add(rs.getString(1));
                System.out.println("schemas: " + schemas);
                check(schemas.contains("public"), "getSchemas");
            }

            // SUBSCRIBE through DECLARE/FETCH.
            try (Statement st = conn.createStatement()) {
                st.execute("DECLARE feed CURSOR FOR SUBSCRIBE per_dest");
                int snapshot = 0;
                try (ResultSet rs = st.executeQuery("FETCH ALL feed WITH (timeout = '1s')")) {
                    while (rs.next()) snapshot++;
                }
                check(snapshot == 2, "snapshot rows " + snapshot);
                try (Connection writer = DriverManager.getConnection(url, props); Statement w = writer.createStatement()) {
                    w.executeUpdate("INSERT INTO parcels (id, dest, kg) VALUES (5, 'Oslo', 3.0)");
                }
                try (ResultSet rs = st.executeQuery("FETCH ALL feed WITH (timeout = '5s')")) {
                    check(rs.next(), "a change arrives");
                    check(rs.getLong("diff") == 1 && "Oslo".equals(rs.getString("dest")), "change row");
                }
                st.execute("CLOSE feed");
            }
        }
        System.out.println("pgjdbc: all checks passed");
    }
}
