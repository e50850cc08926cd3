-- Runs once, when the compose stack's PostgreSQL volume is first initialised,
-- after examples/shop/schema.sql (the files run in name order: 10-, then 20-).
-- It mirrors provision_postgres in scripts/stack: a replication role for
-- Debezium and the daemon, and the publication created up front so that
-- Debezium never needs superuser (publication.autocreate.mode = disabled).
--
-- The role and password match scripts/stack (cdc/cdc): a local demo stack,
-- with PostgreSQL published on 127.0.0.1 only. Do not reuse them elsewhere.

CREATE ROLE cdc WITH LOGIN REPLICATION PASSWORD 'cdc';

DO $$
BEGIN
  EXECUTE format('GRANT ALL ON DATABASE %I TO cdc', current_database());
END
$$;

GRANT ALL ON SCHEMA public TO cdc;
-- The demo tables already exist (schema ran first); later tables are covered
-- by the default privileges.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO cdc;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO cdc;

-- The captured schema only: the daemon's dead letters live in their own
-- schema (cdc_invalidator) and must never be captured (`check` fails if so).
CREATE PUBLICATION cdc_invalidator FOR TABLES IN SCHEMA public;
