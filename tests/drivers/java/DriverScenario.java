// The shared driver scenario for pgjdbc (org.postgresql), plus PreparedStatement reuse past
// prepareThreshold, batch inserts and transactions. Driver defaults everywhere
// (prepareThreshold=5: the 5th execution of a PreparedStatement switches to a named
// server-side statement).
//
//   javac -cp /usr/share/java/postgresql.jar -d build DriverScenario.java
//   PGSIDECAR_DSN=postgres://u:pw@host:port/db java -cp build:/usr/share/java/postgresql.jar DriverScenario

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.math.BigDecimal;
import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.sql.*;
import java.time.OffsetDateTime;
import java.time.ZoneOffset;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicBoolean;

import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;
import org.postgresql.util.PGobject;

public class DriverScenario {
    static final String P = "drv_jdbc";
    static final int CONCURRENCY = Integer.parseInt(System.getenv().getOrDefault("DRIVER_CONNECTIONS", "20"));
    static final int REPEAT = 50;
    static String url;
    static Properties props = new Properties();

    // ---- the values of step (a) ---------------------------------------------------------------
    static final BigDecimal NUMERIC = new BigDecimal("12345.6789");
    static final String JSON = "{\"a\": [1, 2, {\"b\": null}], \"s\": \"Grüße 東京 🚀\", \"n\": 1.5}";
    // jsonb has no key order: the server prints it canonically (keys sorted by length, then bytes).
    static final String JSON_CANONICAL = "{\"a\": [1, 2, {\"b\": null}], \"n\": 1.5, \"s\": \"Grüße 東京 🚀\"}";
    static final OffsetDateTime TS = OffsetDateTime.of(2024, 2, 29, 13, 14, 15, 123456000, ZoneOffset.UTC);
    static final Integer[] INTS = {1, 2, 3, -4, 2147483647};
    static final String[] TEXTS = {"a", "b c", "Grüße", "x,y", "q\"q", "東京"};
    static final byte[] BYTES = {0, 1, 2, (byte) 0xff, 0, 0x41, 0x42, 0x43, 0};
    static final String TEXT = "Grüße 東京 🚀";
    static final long BIGINT = 9223372036854775807L;

    static final String SERVER_CHECK = "SELECT n = 12345.6789 AS numeric,"
        + " j = '{\"a\": [1, 2, {\"b\": null}], \"s\": \"Grüße 東京 🚀\", \"n\": 1.5}'::jsonb AS jsonb,"
        + " ts = '2024-02-29 13:14:15.123456+00'::timestamptz AS timestamptz,"
        + " ia = '{1,2,3,-4,2147483647}'::int[] AS int_array,"
        + " ta = ARRAY['a','b c','Grüße','x,y','q\"q','東京'] AS text_array,"
        + " b = '\\x000102ff0041424300'::bytea AS bytea,"
        + " nul IS NULL AS null, t = 'Grüße 東京 🚀' AS text, bo IS TRUE AS bool,"
        + " bi = 9223372036854775807 AS bigint FROM " + P + "_types WHERE id = 1";

    static Connection connect() throws SQLException {
        return DriverManager.getConnection(url, props);
    }

    static Connection connect(String applicationName) throws SQLException {
        Properties p = new Properties();
        p.putAll(props);
        p.setProperty("ApplicationName", applicationName);
        return DriverManager.getConnection(url, p);
    }

    static void check(boolean ok, String message) {
        if (!ok) throw new AssertionError(message);
    }

    static void eq(String what, Object got, Object want) {
        if (!Objects.deepEquals(got, want)) {
            throw new AssertionError(what + ": got " + show(got) + ", expected " + show(want));
        }
    }

    static String show(Object o) {
        if (o instanceof Object[]) return Arrays.deepToString((Object[]) o);
        if (o instanceof byte[]) return Arrays.toString((byte[]) o);
        return String.valueOf(o);
    }

    static void expectState(SQLException e, String state, String what) {
        if (!state.equals(e.getSQLState())) {
            throw new AssertionError(what + ": expected SQLSTATE " + state + ", got " + e.getSQLState() + ": " + e.getMessage());
        }
    }

    interface SqlRun { void run() throws Exception; }

    static void expectError(String state, String what, SqlRun r) throws Exception {
        try {
            r.run();
        } catch (SQLException e) {
            expectState(e, state, what);
            return;
        }
        throw new AssertionError(what + ": expected SQLSTATE " + state + ", but the statement succeeded");
    }

    static Object one(Connection c, String sql, Object... params) throws SQLException {
        try (PreparedStatement ps = c.prepareStatement(sql)) {
            for (int i = 0; i < params.length; i++) ps.setObject(i + 1, params[i]);
            try (ResultSet rs = ps.executeQuery()) {
                check(rs.next(), "no row from: " + sql);
                return rs.getObject(1);
            }
        }
    }

    // ---- steps ----------------------------------------------------------------------------------
    static String setup() throws Exception {
        try (Connection c = connect(); Statement s = c.createStatement()) {
            for (String sql : new String[] {
                "DROP TABLE IF EXISTS " + P + "_types, " + P + "_items, " + P + "_copy, " + P + "_batch",
                "DROP SCHEMA IF EXISTS " + P + "_g CASCADE",
                "CREATE TABLE " + P + "_types (id int PRIMARY KEY, n numeric, j jsonb, ts timestamptz, ia int[],"
                    + " ta text[], b bytea, nul text, t text, bo bool, bi bigint)",
                "CREATE TABLE " + P + "_items (id int PRIMARY KEY, name text NOT NULL)",
                "CREATE TABLE " + P + "_copy (id int PRIMARY KEY, name text, note text)",
                "CREATE TABLE " + P + "_batch (id int PRIMARY KEY, v text, n numeric)",
                "CREATE SCHEMA " + P + "_g",
                "CREATE TABLE " + P + "_g.probe (v text)",
                "INSERT INTO " + P + "_g.probe VALUES ('" + P + "')",
            }) s.execute(sql);
        }
        return null;
    }

    static void bindTypes(Connection c, PreparedStatement ps, int first) throws SQLException {
        PGobject json = new PGobject();
        json.setType("jsonb");
        json.setValue(JSON);
        ps.setBigDecimal(first, NUMERIC);
        ps.setObject(first + 1, json);
        ps.setObject(first + 2, TS);
        ps.setArray(first + 3, c.createArrayOf("int4", INTS));
        ps.setArray(first + 4, c.createArrayOf("text", TEXTS));
        ps.setBytes(first + 5, BYTES);
        ps.setNull(first + 6, Types.VARCHAR);
        ps.setString(first + 7, TEXT);
        ps.setBoolean(first + 8, true);
        ps.setLong(first + 9, BIGINT);
    }

    static void compareTypes(String prefix, ResultSet rs) throws SQLException {
        check(rs.next(), prefix + ": no row");
        eq(prefix + " numeric", rs.getBigDecimal(1), NUMERIC);
        eq(prefix + " jsonb", rs.getString(2), JSON_CANONICAL);
        eq(prefix + " timestamptz", rs.getObject(3, OffsetDateTime.class).toInstant(), TS.toInstant());
        eq(prefix + " int[]", rs.getArray(4).getArray(), INTS);
        eq(prefix + " text[]", rs.getArray(5).getArray(), TEXTS);
        eq(prefix + " bytea", rs.getBytes(6), BYTES);
        eq(prefix + " null", rs.getString(7), null);
        check(rs.wasNull(), prefix + " null: wasNull() is false");
        eq(prefix + " text", rs.getString(8), TEXT);
        eq(prefix + " bool", rs.getBoolean(9), true);
        eq(prefix + " bigint", rs.getLong(10), BIGINT);
    }

    static String stepTypes() throws Exception {
        try (Connection c = connect()) {
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + P + "_types (id, n, j, ts, ia, ta, b, nul, t, bo, bi)"
                    + " VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")) {
                bindTypes(c, ps, 1);
                ps.executeUpdate();
            }
            try (PreparedStatement ps = c.prepareStatement("SELECT n, j, ts, ia, ta, b, nul, t, bo, bi FROM " + P + "_types WHERE id = ?")) {
                ps.setInt(1, 1);
                try (ResultSet rs = ps.executeQuery()) { compareTypes("stored", rs); }
            }
            try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery(SERVER_CHECK)) {
                check(rs.next(), "server check: no row");
                List<String> bad = new ArrayList<>();
                for (int i = 1; i <= rs.getMetaData().getColumnCount(); i++) {
                    if (!rs.getBoolean(i)) bad.add(rs.getMetaData().getColumnName(i));
                }
                check(bad.isEmpty(), "server-side comparison failed for: " + bad);
            }
            // Echo, executed past prepareThreshold so later runs use a named statement with binary results.
            try (PreparedStatement ps = c.prepareStatement("SELECT ?::numeric, ?::jsonb, ?::timestamptz, ?::int[], ?::text[], ?::bytea,"
                    + " ?::text, ?::text, ?::bool, ?::bigint")) {
                for (int i = 0; i < 7; i++) {
                    bindTypes(c, ps, 1);
                    try (ResultSet rs = ps.executeQuery()) { compareTypes("echo #" + (i + 1), rs); }
                }
            }
        }
        return null;
    }

    static String stepPreparedConcurrency() throws Exception {
        String sql = "SELECT ?::int * 2 AS doubled, ?::text AS tag, pg_backend_pid() AS pid /* " + P + " b */";
        ExecutorService ex = Executors.newFixedThreadPool(CONCURRENCY);
        CyclicBarrier barrier = new CyclicBarrier(CONCURRENCY);
        List<Future<List<Integer>>> futures = new ArrayList<>();
        for (int n = 0; n < CONCURRENCY; n++) {
            final int conn = n;
            futures.add(ex.submit(() -> {
                List<Integer> pids = new ArrayList<>();
                try (Connection c = connect(); PreparedStatement ps = c.prepareStatement(sql)) {
                    barrier.await(60, TimeUnit.SECONDS);
                    for (int i = 0; i < REPEAT; i++) {
                        int a = conn * 1000 + i;
                        String tag = "c" + conn + "-" + i;
                        boolean txn = i % 10 == 9;
                        if (txn) c.setAutoCommit(false);
                        ps.setInt(1, a);
                        ps.setString(2, tag);
                        try (ResultSet rs = ps.executeQuery()) {
                            check(rs.next(), "no row");
                            if (rs.getInt(1) != 2 * a || !tag.equals(rs.getString(2))) {
                                throw new AssertionError("connection " + conn + " iteration " + i + ": got (" + rs.getInt(1) + ", "
                                    + rs.getString(2) + "), expected (" + 2 * a + ", " + tag + ")");
                            }
                            pids.add(rs.getInt(3));
                        }
                        if (txn) { c.commit(); c.setAutoCommit(true); }
                    }
                    check(ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(),
                        "connection " + conn + ": pgjdbc never switched to a server-prepared statement");
                }
                return pids;
            }));
        }
        Set<Integer> backends = new HashSet<>();
        int moved = 0;
        try {
            for (Future<List<Integer>> f : futures) {
                List<Integer> pids = unwrap(f);
                backends.addAll(pids);
                if (new HashSet<>(pids).size() > 1) moved++;
            }
        } finally {
            ex.shutdownNow();
        }
        return CONCURRENCY + "x" + REPEAT + " executions on " + backends.size() + " backends; " + moved + "/" + CONCURRENCY
            + " connections moved between backends";
    }

    static <T> T unwrap(Future<T> f) throws Exception {
        try {
            return f.get(120, TimeUnit.SECONDS);
        } catch (ExecutionException e) {
            if (e.getCause() instanceof Exception) throw (Exception) e.getCause();
            if (e.getCause() instanceof Error) throw (Error) e.getCause();
            throw e;
        }
    }

    static String stepTransactions() throws Exception {
        try (Connection c = connect(); Connection other = connect()) {
            String count = "SELECT count(*) FROM " + P + "_items WHERE id = ?";
            c.setAutoCommit(false);
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + P + "_items VALUES (?, ?)")) {
                ins.setInt(1, 1);
                ins.setString(2, "rolled back");
                ins.executeUpdate();
                eq("own uncommitted insert visible", one(c, count, 1), 1L);
                c.rollback();
                eq("after rollback (same connection)", one(c, count, 1), 0L);
                c.commit();
                eq("after rollback (other connection)", one(other, count, 1), 0L);
                ins.setInt(1, 2);
                ins.setString(2, "committed");
                ins.executeUpdate();
                c.commit();
                eq("after commit (other connection)", one(other, "SELECT name FROM " + P + "_items WHERE id = 2"), "committed");
                try (Statement s = c.createStatement()) {
                    s.execute("INSERT INTO " + P + "_items VALUES (3, 'outer')");
                    Savepoint sp = c.setSavepoint();
                    s.execute("INSERT INTO " + P + "_items VALUES (4, 'inner')");
                    c.rollback(sp);
                }
                c.commit();
            }
            try (Statement s = other.createStatement();
                 ResultSet rs = s.executeQuery("SELECT array_agg(id ORDER BY id) FROM " + P + "_items WHERE id IN (3, 4)")) {
                rs.next();
                eq("savepoint rollback", rs.getArray(1).getArray(), new Integer[] {3});
            }
            // Many short transactions reusing one PreparedStatement (named after the 5th use).
            try (PreparedStatement ins = c.prepareStatement("INSERT INTO " + P + "_items VALUES (?, ?)")) {
                for (int i = 0; i < 30; i++) {
                    ins.setInt(1, 1000 + i);
                    ins.setString(2, "t" + i);
                    ins.executeUpdate();
                    if (i % 3 == 0) c.rollback(); else c.commit();
                }
            }
            c.setAutoCommit(true);
            eq("rows committed by 30 short transactions", one(other, "SELECT count(*) FROM " + P + "_items WHERE id >= 1000"), 20L);
        }
        return null;
    }

    static String stepErrors() throws Exception {
        try (Connection c = connect()) {
            expectError("22012", "division by zero", () -> one(c, "SELECT 1/0"));
            eq("statement after error", one(c, "SELECT 41 + 1"), 42);
            try (Statement s = c.createStatement()) { s.execute("INSERT INTO " + P + "_items VALUES (100, 'x')"); }
            expectError("23505", "unique violation", () -> {
                try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + P + "_items VALUES (?, ?)")) {
                    ps.setInt(1, 100);
                    ps.setString(2, "dup");
                    ps.executeUpdate();
                }
            });
            eq("statement after unique violation", one(c, "SELECT ?::int", 7), 7);
            try (PreparedStatement ps = c.prepareStatement("SELECT 100 / ?::int")) {
                for (int i = 0; i < 6; i++) {
                    ps.setInt(1, 5);
                    try (ResultSet rs = ps.executeQuery()) { rs.next(); }
                }
                ps.setInt(1, 0);
                expectError("22012", "server-prepared statement division by zero", () -> { try (ResultSet rs = ps.executeQuery()) { rs.next(); } });
                ps.setInt(1, 4);
                try (ResultSet rs = ps.executeQuery()) { rs.next(); eq("prepared statement after its error", rs.getInt(1), 25); }
            }
            c.setAutoCommit(false);
            one(c, "SELECT 1");
            expectError("22012", "division by zero in transaction", () -> one(c, "SELECT 1/0"));
            expectError("25P02", "statement in aborted transaction", () -> one(c, "SELECT 1"));
            c.rollback();
            eq("statement after rollback of failed transaction", one(c, "SELECT 'ok'"), "ok");
            c.commit();
        }
        return null;
    }

    static void waitActive(Connection probe, String marker) throws Exception {
        long deadline = System.nanoTime() + 10_000_000_000L;
        while (System.nanoTime() < deadline) {
            Object n = one(probe, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE ?",
                "%" + marker + "%");
            if (((Long) n) > 0) return;
            Thread.sleep(50);
        }
        throw new AssertionError("the pg_sleep query (" + marker + ") never showed up as active in pg_stat_activity");
    }

    static String stepCancel() throws Exception {
        String marker = P + "_cancel_marker";
        try (Connection c = connect(); Connection probe = connect(); Statement s = c.createStatement()) {
            ExecutorService ex = Executors.newSingleThreadExecutor();
            try {
                Future<Long> f = ex.submit(() -> {
                    try {
                        s.execute("/* pgsidecar: route=primary */ SELECT pg_sleep(10) /* " + marker + " */");
                    } catch (SQLException e) {
                        expectState(e, "57014", "cancelled statement");
                        return System.nanoTime();
                    }
                    throw new AssertionError("pg_sleep(10) was not cancelled");
                });
                waitActive(probe, marker);
                long began = System.nanoTime();
                s.cancel();
                long ended;
                try {
                    ended = unwrap(f);
                } catch (TimeoutException e) {
                    throw new AssertionError("pg_sleep(10) still running long after the cancel");
                }
                double took = (ended - began) / 1e9;
                check(took <= 5, String.format("cancel took %.1fs (> 5 s)", took));
                eq("statement after cancel", one(c, "SELECT 'alive'"), "alive");
                return String.format("cancelled after %.2fs", took);
            } finally {
                ex.shutdownNow();
            }
        }
    }

    static List<String[]> copyRows() {
        List<String[]> rows = new ArrayList<>();
        for (int i = 1; i <= 1000; i++) {
            rows.add(new String[] {String.valueOf(i), i % 7 == 0 ? null : "name " + i + " Grüße 東京 🚀", "tab\there\nnewline \\ backslash " + i});
        }
        return rows;
    }

    static String esc(String v) {
        if (v == null) return "\\N";
        return v.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r");
    }

    static String unesc(String f) {
        if (f.equals("\\N")) return null;
        StringBuilder sb = new StringBuilder();
        for (int i = 0; i < f.length(); i++) {
            char ch = f.charAt(i);
            if (ch == '\\' && i + 1 < f.length()) {
                char n = f.charAt(++i);
                switch (n) {
                    case 't': sb.append('\t'); break;
                    case 'n': sb.append('\n'); break;
                    case 'r': sb.append('\r'); break;
                    default: sb.append(n);
                }
            } else {
                sb.append(ch);
            }
        }
        return sb.toString();
    }

    static String stepCopy() throws Exception {
        List<String[]> rows = copyRows();
        try (Connection c = connect()) {
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringBuilder sb = new StringBuilder();
            for (String[] r : rows) sb.append(esc(r[0])).append('\t').append(esc(r[1])).append('\t').append(esc(r[2])).append('\n');
            long n = cm.copyIn("COPY " + P + "_copy (id, name, note) FROM STDIN", new ByteArrayInputStream(sb.toString().getBytes(StandardCharsets.UTF_8)));
            eq("CopyManager.copyIn row count", n, 1000L);
            eq("rows after COPY FROM", one(c, "SELECT count(*) FROM " + P + "_copy"), 1000L);
            eq("a copied row", one(c, "SELECT note FROM " + P + "_copy WHERE id = 8"), rows.get(7)[2]);
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            cm.copyOut("COPY (SELECT id, name, note FROM " + P + "_copy ORDER BY id) TO STDOUT", out);
            String[] lines = out.toString(StandardCharsets.UTF_8).split("\n");
            eq("COPY TO STDOUT rows", lines.length, rows.size());
            for (int i = 0; i < lines.length; i++) {
                String[] f = lines[i].split("\t", -1);
                String[] got = {unesc(f[0]), unesc(f[1]), unesc(f[2])};
                eq("COPY TO STDOUT row " + i, got, rows.get(i));
            }
            eq("connection after COPY", one(c, "SELECT 1"), 1);
        }
        return null;
    }

    static final String[] SETTINGS_SQL = {
        "SET application_name = '" + P + "_g'",
        "SET TIME ZONE 'Asia/Tokyo'",
        "SET search_path = public, " + P + "_g",
        "SET statement_timeout = '31s'",
    };
    static final String[][] WANT = {
        {"application_name", P + "_g"}, {"TimeZone", "Asia/Tokyo"}, {"search_path", "public, " + P + "_g"}, {"statement_timeout", "31s"},
    };

    static String showOne(Connection c, String name) throws SQLException {
        try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SHOW " + name)) {
            rs.next();
            return rs.getString(1);
        }
    }

    static String stepSettings() throws Exception {
        AtomicBoolean stop = new AtomicBoolean(false);
        List<String> sideErrors = Collections.synchronizedList(new ArrayList<>());
        List<Thread> threads = new ArrayList<>();
        for (int n = 0; n < 4; n++) {
            final int k = n;
            threads.add(new Thread(() -> {
                try (Connection c = connect(); Statement s = c.createStatement()) {
                    s.execute("SET application_name = 'noise_" + k + "'");
                    s.execute("SET TIME ZONE 'America/New_York'");
                    s.execute("SET statement_timeout = '32s'");
                    c.setAutoCommit(false);
                    while (!stop.get()) {
                        String app = showOne(c, "application_name");
                        String tz = showOne(c, "TimeZone");
                        s.execute("SELECT pg_sleep(0.005)");
                        c.commit();
                        if (!app.equals("noise_" + k) || !tz.equals("America/New_York")) {
                            throw new AssertionError("noise client " + k + " saw application_name='" + app + "' TimeZone='" + tz + "'");
                        }
                    }
                } catch (Throwable e) {
                    sideErrors.add("noise " + k + ": " + e.getMessage());
                }
            }));
        }
        for (int n = 0; n < 2; n++) {
            final int k = n;
            threads.add(new Thread(() -> {
                try (Connection c = connect("clean_" + k)) {
                    String defaultTz = showOne(c, "TimeZone"); // the session's own, at connect;
                    c.setAutoCommit(false);
                    while (!stop.get()) {
                        String app = showOne(c, "application_name");
                        String tz = showOne(c, "TimeZone");
                        String st = showOne(c, "statement_timeout");
                        c.commit();
                        if (!app.equals("clean_" + k) || !tz.equals(defaultTz) || !st.equals("0")) {
                            throw new AssertionError("clean client " + k + " saw application_name='" + app + "' TimeZone='" + tz
                                + "' statement_timeout='" + st + "' (expected clean_" + k + ", " + defaultTz + ", 0): another session's settings leaked");
                        }
                        Thread.sleep(5);
                    }
                } catch (Throwable e) {
                    sideErrors.add("clean " + k + ": " + e.getMessage());
                }
            }));
        }
        threads.forEach(Thread::start);
        List<String> problems = new ArrayList<>();
        int failedTxns = 0;
        try (Connection c = connect()) {
            List<String> before = List.of(showOne(c, "TimeZone"), showOne(c, "DateStyle"));
            try (Statement s = c.createStatement()) {
                for (String sql : SETTINGS_SQL) s.execute(sql);
            }
            c.setAutoCommit(false);
            for (int i = 0; i < 20; i++) {
                List<String> bad = new ArrayList<>();
                try {
                    for (String[] w : WANT) {
                        String got = showOne(c, w[0]);
                        if (!got.equals(w[1])) bad.add("SHOW " + w[0] + " = '" + got + "', expected '" + w[1] + "'");
                    }
                    int off = ((Number) one(c, "SELECT extract(timezone FROM now())::int")).intValue();
                    if (off != 9 * 3600) bad.add("now() is at UTC offset " + off + "s, expected 32400s");
                    Object probe = one(c, "SELECT v FROM probe");
                    if (!P.equals(probe)) bad.add("unqualified table 'probe' gave '" + probe + "'");
                    c.commit();
                } catch (SQLException e) {
                    bad.add(e.getSQLState() + " " + e.getMessage().replaceAll("\\s+", " "));
                    c.rollback();
                }
                if (!bad.isEmpty()) {
                    failedTxns++;
                    if (problems.isEmpty()) problems.add("first (transaction " + (i + 1) + "): " + String.join("; ", bad));
                }
                Thread.sleep(20);
            }
            c.setAutoCommit(true);
            try (Statement s = c.createStatement()) { s.execute("RESET ALL"); }
            c.setAutoCommit(false);
            List<String> after = List.of(showOne(c, "TimeZone"), showOne(c, "DateStyle"));
            c.commit();
            if (!after.equals(before)) {
                sideErrors.add("after RESET ALL: TimeZone, DateStyle = " + after + ", expected the session's own " + before);
            }
        } finally {
            stop.set(true);
            for (Thread t : threads) t.join(30000);
        }
        List<String> parts = new ArrayList<>();
        if (failedTxns > 0) parts.add("settings wrong in " + failedTxns + "/20 transactions; " + problems.get(0));
        parts.addAll(sideErrors);
        check(parts.isEmpty(), String.join(" | ", parts));
        return null;
    }

    static String stepPreparedReuse() throws Exception {
        // One PreparedStatement reused 100 times (named server-side from the 5th), alternating
        // autocommit and explicit transactions, on a connection whose backends keep changing.
        try (Connection c = connect(); PreparedStatement ps = c.prepareStatement("SELECT ?::int + 1, ?::text || '!' /* " + P + " reuse */")) {
            for (int i = 0; i < 100; i++) {
                c.setAutoCommit(i % 2 == 0);
                ps.setInt(1, i);
                ps.setString(2, "v" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    rs.next();
                    eq("reused statement execution " + i, rs.getInt(1) + "/" + rs.getString(2), (i + 1) + "/v" + i + "!");
                }
                if (i % 2 == 1) c.commit();
            }
            check(ps.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(), "pgjdbc never switched to a server-prepared statement");
        }
        return "100 executions, server-prepared after prepareThreshold=5";
    }

    static String stepBatch() throws Exception {
        try (Connection c = connect()) {
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + P + "_batch (id, v, n) VALUES (?, ?, ?)")) {
                for (int round = 0; round < 5; round++) {
                    for (int i = 0; i < 200; i++) {
                        int id = round * 200 + i;
                        ps.setInt(1, id);
                        ps.setString(2, "batch " + id + " Grüße");
                        ps.setBigDecimal(3, NUMERIC.add(BigDecimal.valueOf(id)));
                        ps.addBatch();
                    }
                    int[] counts = ps.executeBatch();
                    eq("executeBatch update counts", counts.length, 200);
                    for (int k : counts) check(k == 1 || k == Statement.SUCCESS_NO_INFO, "executeBatch update count " + k);
                    c.commit();
                }
            }
            c.setAutoCommit(true);
            eq("batched rows", one(c, "SELECT count(*) FROM " + P + "_batch"), 1000L);
            eq("batched sum", one(c, "SELECT sum(n) FROM " + P + "_batch"),
                NUMERIC.multiply(BigDecimal.valueOf(1000)).add(BigDecimal.valueOf(999L * 1000 / 2)));
            // A failing batch rolls back whole.
            c.setAutoCommit(false);
            try (PreparedStatement ps = c.prepareStatement("INSERT INTO " + P + "_batch (id, v, n) VALUES (?, ?, ?)")) {
                for (int id : new int[] {5000, 5001, 0}) {
                    ps.setInt(1, id);
                    ps.setString(2, "x");
                    ps.setBigDecimal(3, BigDecimal.ONE);
                    ps.addBatch();
                }
                try {
                    ps.executeBatch();
                    throw new AssertionError("batch with a duplicate key succeeded");
                } catch (BatchUpdateException e) {
                    SQLException cause = e.getNextException() != null ? e.getNextException() : e;
                    expectState(cause, "23505", "failing batch");
                }
                c.rollback();
            }
            c.setAutoCommit(true);
            eq("rows after failed batch", one(c, "SELECT count(*) FROM " + P + "_batch"), 1000L);
        }
        return "5 batches of 200 + a failing batch";
    }

    // Naive checkout (read the stock, check it, write back the value read minus one) with
    // autocommit off: pgjdbc sends BEGIN in the same Parse/Bind/Execute ... Sync batch as each
    // transaction's first statement (named statements once past prepareThreshold). Through a
    // sidecar with a [[locks]] rule on the inventory table (DRIVER_LOCKS_DSN, set by
    // tests/drivers.rs) nothing may be oversold; elsewhere the step is skipped.
    static String stepCheckout() throws Exception {
        String dsn = System.getenv("DRIVER_LOCKS_DSN");
        if (dsn == null || dsn.isEmpty()) return "SKIP (DRIVER_LOCKS_DSN not set: no sidecar with a [[locks]] rule)";
        URI u = new URI(dsn);
        String lockUrl = "jdbc:postgresql://" + u.getHost() + ":" + u.getPort() + u.getPath();
        int units = 30;
        try (Connection c = DriverManager.getConnection(lockUrl, props); Statement st = c.createStatement()) {
            st.execute("DROP TABLE IF EXISTS " + P + "_inventory, " + P + "_order_lines");
            st.execute("CREATE TABLE " + P + "_inventory (sku_id bigint, warehouse_id int, on_hand int NOT NULL, PRIMARY KEY (sku_id, warehouse_id))");
            st.execute("CREATE TABLE " + P + "_order_lines (id bigserial PRIMARY KEY, sku_id bigint, qty int)");
            st.execute("INSERT INTO " + P + "_inventory SELECT s, w, 10 FROM generate_series(1, 3) s, generate_series(1, 2) w");
        }
        int attempts = 4;
        ExecutorService pool = Executors.newFixedThreadPool(CONCURRENCY);
        List<Future<Integer>> buyers = new ArrayList<>();
        long began = System.nanoTime();
        for (int b = 0; b < CONCURRENCY; b++) {
            final int buyer = b;
            buyers.add(pool.submit(() -> {
                int orders = 0;
                try (Connection c = DriverManager.getConnection(lockUrl, props);
                     PreparedStatement read = c.prepareStatement("SELECT on_hand FROM " + P + "_inventory WHERE sku_id = ? AND warehouse_id = 1");
                     PreparedStatement write = c.prepareStatement("UPDATE " + P + "_inventory SET on_hand = ? WHERE sku_id = ? AND warehouse_id = 1");
                     PreparedStatement line = c.prepareStatement("INSERT INTO " + P + "_order_lines (sku_id, qty) VALUES (?, 1)")) {
                    c.setAutoCommit(false);
                    for (int i = 0; i < attempts; i++) {
                        long sku = (buyer + i) % 3 + 1;
                        read.setLong(1, sku);
                        int onHand;
                        try (ResultSet rs = read.executeQuery()) {
                            check(rs.next(), "stock row of sku " + sku);
                            onHand = rs.getInt(1);
                        }
                        if (onHand > 0) {
                            Thread.sleep(2); // the app thinks
                            write.setInt(1, onHand - 1);
                            write.setLong(2, sku);
                            eq("updated rows", write.executeUpdate(), 1);
                            line.setLong(1, sku);
                            line.executeUpdate();
                            orders++;
                        }
                        c.commit();
                    }
                }
                return orders;
            }));
        }
        int orders = 0;
        for (Future<Integer> f : buyers) orders += f.get(120, TimeUnit.SECONDS);
        pool.shutdown();
        double seconds = (System.nanoTime() - began) / 1e9;
        try (Connection c = DriverManager.getConnection(lockUrl, props)) {
            eq("orders placed for " + units + " units", orders, units);
            eq("stock left", one(c, "SELECT sum(on_hand) FROM " + P + "_inventory WHERE warehouse_id = 1"), 0L);
            eq("order lines", one(c, "SELECT count(*) FROM " + P + "_order_lines"), (long) units);
        }
        return String.format("%d buyers x %d checkouts: %d orders for %d units, none oversold (%.1fs)",
            CONCURRENCY, attempts, orders, units, seconds);
    }

    public static void main(String[] args) throws Exception {
        String dsn = System.getenv("PGSIDECAR_DSN");
        if (dsn == null || dsn.isEmpty()) {
            System.err.println("PGSIDECAR_DSN is not set (the proxy's postgres:// URL)");
            System.exit(2);
        }
        URI u = new URI(dsn);
        String[] userInfo = u.getUserInfo() == null ? new String[0] : u.getUserInfo().split(":", 2);
        url = "jdbc:postgresql://" + u.getHost() + ":" + (u.getPort() > 0 ? u.getPort() : 5432) + u.getPath();
        if (userInfo.length > 0) props.setProperty("user", java.net.URLDecoder.decode(userInfo[0], StandardCharsets.UTF_8));
        if (userInfo.length > 1) props.setProperty("password", java.net.URLDecoder.decode(userInfo[1], StandardCharsets.UTF_8));
        props.setProperty("connectTimeout", "10");

        System.out.println("pgjdbc " + org.postgresql.Driver.class.getPackage().getImplementationVersion()
            + " (" + new org.postgresql.Driver().getMajorVersion() + "." + new org.postgresql.Driver().getMinorVersion() + "), Java "
            + System.getProperty("java.version"));
        Object[][] steps = {
            {"setup", (Callable<String>) DriverScenario::setup},
            {"a-types", (Callable<String>) DriverScenario::stepTypes},
            {"b-prepared-x20", (Callable<String>) DriverScenario::stepPreparedConcurrency},
            {"c-transactions", (Callable<String>) DriverScenario::stepTransactions},
            {"d-errors", (Callable<String>) DriverScenario::stepErrors},
            {"e-cancel", (Callable<String>) DriverScenario::stepCancel},
            {"f-copy", (Callable<String>) DriverScenario::stepCopy},
            {"g-settings", (Callable<String>) DriverScenario::stepSettings},
            {"x-prepared-reuse", (Callable<String>) DriverScenario::stepPreparedReuse},
            {"x-batch", (Callable<String>) DriverScenario::stepBatch},
            {"x-checkout", (Callable<String>) DriverScenario::stepCheckout},
        };
        List<String> failed = new ArrayList<>();
        for (Object[] step : steps) {
            String name = (String) step[0];
            @SuppressWarnings("unchecked") Callable<String> fn = (Callable<String>) step[1];
            System.out.println("step " + name + ": START");
            long began = System.nanoTime();
            try {
                String info = fn.call();
                if (info != null && info.startsWith("SKIP")) {
                    System.out.printf("step %s: %s%n", name, info);
                    continue;
                }
                System.out.printf("step %s: PASS (%.1fs)%s%n", name, (System.nanoTime() - began) / 1e9, info == null ? "" : " " + info);
            } catch (Throwable e) {
                failed.add(name);
                String msg = (e instanceof SQLException ? ((SQLException) e).getSQLState() + " " : "")
                    + e.getClass().getSimpleName() + ": " + e.getMessage();
                msg = msg.replaceAll("\\s+", " ");
                System.out.printf("step %s: FAIL (%.1fs) %s%n", name, (System.nanoTime() - began) / 1e9, msg.length() > 600 ? msg.substring(0, 600) : msg);
                e.printStackTrace();
            }
            System.out.flush();
        }
        if (!failed.isEmpty()) {
            System.out.println("pgjdbc: failed steps: " + String.join(", ", failed));
            System.exit(1);
        }
        System.out.println("pgjdbc: all steps passed");
        System.exit(0);
    }
}
