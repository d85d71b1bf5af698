-- CEM ClickHouse bootstrap. The clickhouse-server image runs this once, as the bootstrap administrator
-- (CLICKHOUSE_USER from deploy/cem.env), when the data volume is empty.
--
-- Users. The application users are declared in users.d/cem-users.xml rather than here, because their
-- passwords must come from the environment (from_env) and SQL cannot read environment variables; a
-- CREATE USER ... IDENTIFIED BY '...' here would put a password in the repository.
--   cem_writer  the workers: SELECT, INSERT, ALTER, CREATE TABLE, CREATE VIEW (and CREATE DATABASE for
--               the worker's idempotent `CREATE DATABASE IF NOT EXISTS cem`) on cem.* only
--   grafana     dashboards: SELECT on cem.* only, readonly=1 profile
--
-- Tables. The worker creates its DDL (touchpoints_enriched with its kpi_minute and offsets projections,
-- the kpi_minute view, customer_state, dead_letters, model_metrics, alerts) on start, as cem_writer; nothing to do here.

CREATE DATABASE IF NOT EXISTS cem;

-- Fail the init (and so the container) loudly if the users file was not mounted or did not parse.
SELECT throwIf(
    count() != 2,
    'cem_writer and grafana users are missing: mount deploy/clickhouse/users.d/cem-users.xml'
)
FROM system.users
WHERE name IN ('cem_writer', 'grafana');
