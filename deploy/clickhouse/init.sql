-- CEM ClickHouse bootstrap. The clickhouse-server image runs this once, as the bootstrap administrator
-- (CLICKHOUSE_USER from deploy/env/clickhouse.env), when the data volume is empty.
--
-- Users. The application users are declared in users.d/cem-users.xml rather than here, because their
-- passwords must come from the environment (from_env) and SQL cannot read environment variables; a
-- CREATE USER ... IDENTIFIED BY '...' here would put a password in the repository.
--   cem_writer   the workers: SELECT, INSERT on cem.*, plus ALTER UPDATE / ALTER DELETE on
--                touchpoints_enriched, customer_state, alerts and dead_letters (GDPR erasure only);
--                no DDL at all
--   cem_migrate  the one-shot `cem migrate` service: CREATE DATABASE / TABLE / VIEW, ALTER ADD COLUMN,
--                ALTER ADD / MATERIALIZE PROJECTION and SELECT on cem.*, INSERT on cem.schema_version only
--                (schema only, no data changes)
--   grafana      dashboards: SELECT on cem.* only, readonly=1 profile
-- All three accept connections only from the compose network's subnet and loopback.
--
-- Tables. `cem migrate` (compose service `migrate`, before the workers start) creates and upgrades the DDL
-- (touchpoints_enriched with its kpi_minute and offsets projections, the kpi_minute view, customer_state,
-- dead_letters, model_metrics, alerts) as cem_migrate; nothing to do here.

CREATE DATABASE IF NOT EXISTS cem;

-- Fail the init (and so the container) loudly if the users file was not mounted or did not parse.
SELECT throwIf(
    count() != 3,
    'cem_writer, cem_migrate and grafana users are missing: mount deploy/clickhouse/users.d/cem-users.xml'
)
FROM system.users
WHERE name IN ('cem_writer', 'cem_migrate', 'grafana');
