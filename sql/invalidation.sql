-- pgsidecar cache invalidation for writes that bypass the proxy.
--
-- pgsidecar caches results of reads on some tables and drops them when it
-- sees a write to those tables go through it. Writes that do not go through
-- the proxy (psql sessions, batch jobs, ETL, other services, a DBA's fix)
-- are reported by these triggers instead.
--
-- PROTOCOL (the proxy LISTENs on it):
--   channel:  pgsidecar_invalidate
--   payload:  <schema>.<table>  of the table written, e.g.  public.prices
--             Built as TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME: the raw
--             names, NOT quoted with quote_ident (a table named "Prices"
--             gives public.Prices). Split at the first dot; a schema name
--             containing a dot would be ambiguous (don't do that).
--   when:     after every INSERT, UPDATE, DELETE or TRUNCATE statement on a
--             watched table, one notification per statement (FOR EACH
--             STATEMENT), even when the statement changed no row (an
--             UPDATE matching nothing still notifies: over-invalidation is
--             harmless, a missed one is not). MERGE and INSERT ... ON
--             CONFLICT fire the INSERT/UPDATE triggers, so they notify too.
-- Postgres semantics the listener must know:
--   * delivered only when the writing transaction COMMITs (never on
--     rollback), after the commit; the cache may serve the old row in
--     between, for as long as the notification takes to arrive.
--   * identical notifications within one transaction are collapsed: a
--     transaction that updates prices 1000 times sends one public.prices.
--   * NOTIFY is not replicated: LISTEN on the PRIMARY. A hot standby
--     refuses LISTEN, and writes cannot happen there anyway.
--   * LISTEN is per session: the proxy needs a dedicated connection, not a
--     pooled one in transaction mode. If that connection drops,
--     notifications sent meanwhile are lost: the proxy must flush the
--     cached tables after reconnecting.
--   * Payloads are well under the 8000-byte NOTIFY limit (two names of at
--     most 63 bytes each).
--
-- Watched tables: products, prices, inventory, categories, warehouses (the
-- tables the proxy caches). A DBA adds one with
--     SELECT pgsidecar_watch('public.my_table');
-- and removes it with
--     SELECT pgsidecar_unwatch('public.my_table');
-- The trigger on each table is named pgsidecar_invalidate.
--
-- Idempotent: CREATE OR REPLACE for the functions; pgsidecar_watch drops and
-- recreates its trigger (DROP TRIGGER IF EXISTS), so running this file again
-- changes nothing. Note that (re)creating a trigger briefly takes a lock that
-- blocks writes to the table: cheap on an idle table, but on a busy
-- production table run it when a short write stall is acceptable.
--
-- The functions are created in schema public, explicitly, so the trigger
-- does not depend on the search_path of whoever runs this file or of the
-- sessions that write. Needs: CREATE on schema public (the database owner
-- has it) and ownership of the watched tables.

CREATE OR REPLACE FUNCTION public.pgsidecar_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgsidecar_invalidate', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;  -- AFTER ... FOR EACH STATEMENT: the return value is ignored
END
$$;

COMMENT ON FUNCTION public.pgsidecar_notify_change() IS
    'pgsidecar: NOTIFY pgsidecar_invalidate, payload schema.table, after each write statement';

-- Installs (or reinstalls) the statement-level invalidation trigger on a table.
CREATE OR REPLACE FUNCTION public.pgsidecar_watch(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET client_min_messages = warning  -- no "trigger does not exist, skipping" notices
AS $$
DECLARE
    kind "char";
BEGIN
    SELECT relkind INTO kind FROM pg_catalog.pg_class WHERE oid = tbl;
    -- r = table, p = partitioned table. A partitioned table's trigger fires
    -- for statements that name the parent; writes addressed to a partition
    -- directly need the partition watched too.
    IF kind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'pgsidecar_watch: % is not a table (relkind %)', tbl, kind
            USING HINT = 'Watch the tables behind a view or materialized view.';
    END IF;
    -- %s of a regclass is the name quoted and schema-qualified as needed.
    EXECUTE format('DROP TRIGGER IF EXISTS pgsidecar_invalidate ON %s', tbl);
    EXECUTE format('CREATE TRIGGER pgsidecar_invalidate'
                   ' AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON %s'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION public.pgsidecar_notify_change()', tbl);
END
$$;

COMMENT ON FUNCTION public.pgsidecar_watch(regclass) IS
    'pgsidecar: (re)install the pgsidecar_invalidate statement trigger on a table';

CREATE OR REPLACE FUNCTION public.pgsidecar_unwatch(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET client_min_messages = warning
AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS pgsidecar_invalidate ON %s', tbl);
END
$$;

COMMENT ON FUNCTION public.pgsidecar_unwatch(regclass) IS
    'pgsidecar: remove the pgsidecar_invalidate trigger from a table';

-- The tables pgsidecar caches (names resolved on the current search_path,
-- like sql/schema.sql's). Tables that do not exist (yet) are skipped, so this file can be
-- loaded into a database holding only part of the catalog; run it again after creating them.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['products', 'prices', 'inventory', 'categories', 'warehouses'] LOOP
        IF to_regclass(t) IS NOT NULL THEN
            PERFORM public.pgsidecar_watch(to_regclass(t));
        END IF;
    END LOOP;
END
$$;
