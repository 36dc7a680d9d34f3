-- 0001: heads, batches and events; append-only triggers; the writer role.

-- One row per device: where its stored chain ends. Updated by each append (under
-- SELECT ... FOR UPDATE, which serializes the receivers sharing this database), never
-- deleted. seq 0 and chain '' mean nothing is stored yet.
CREATE TABLE heads (
	site     text COLLATE "C" NOT NULL,
	device   text COLLATE "C" NOT NULL,
	chain    text COLLATE "C" NOT NULL DEFAULT '',
	seq      bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
	hash     text NOT NULL DEFAULT '',
	receipt  bytea,
	updated  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (site, device)
);

-- One row per stored batch, as received. wire is the batch in the wire format (what
-- `edgeaudit verify` reads); header is its exact header bytes (hashed into the next
-- batch's prev). lz4 compresses the large wire column faster than the default pglz.
CREATE TABLE batches (
	site      text COLLATE "C" NOT NULL,
	device    text COLLATE "C" NOT NULL,
	chain     text COLLATE "C" NOT NULL,
	seq       bigint NOT NULL CHECK (seq > 0),
	hash      text NOT NULL,
	header    bytea NOT NULL,
	wire      bytea COMPRESSION lz4 NOT NULL,
	events    integer NOT NULL,
	receipt   bytea NOT NULL,
	received  timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (site, device, chain, seq)
);

-- One row per event: body is the EXACT sealed bytes (bytea, never jsonb, which would
-- reorder keys and break the Merkle proofs); the other columns are extracted from it for
-- the questions a security team asks. Tokens compare bytewise (COLLATE "C"), which also
-- lets a btree serve a prefix LIKE ('phi.%').
CREATE TABLE events (
	site        text COLLATE "C" NOT NULL,
	device      text COLLATE "C" NOT NULL,
	chain       text COLLATE "C" NOT NULL,
	seq         bigint NOT NULL,
	idx         integer NOT NULL,
	time        timestamptz,
	action      text COLLATE "C",
	outcome     text COLLATE "C",
	patient     text COLLATE "C",
	actor_user  text COLLATE "C",
	study       text[] COLLATE "C",
	body        bytea NOT NULL,
	PRIMARY KEY (site, device, chain, seq, idx)
);
CREATE INDEX events_patient_time ON events (patient, time) WHERE patient IS NOT NULL;
CREATE INDEX events_user_time ON events (actor_user, time) WHERE actor_user IS NOT NULL;
CREATE INDEX events_action_outcome_time ON events (action, outcome, time);
CREATE INDEX events_device_time ON events (site, device, time);
CREATE INDEX events_study ON events USING gin (study) WHERE study IS NOT NULL;

-- Append-only: no role, the owner and superusers included, updates, deletes or
-- truncates a stored batch or event; heads are updated but never deleted. (A superuser
-- can still disable triggers: the grants below are the other half.)
CREATE FUNCTION edgeaudit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'edgeaudit: % on % is refused: the audit store is append-only', TG_OP, TG_TABLE_NAME
		USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER batches_append_only BEFORE UPDATE OR DELETE ON batches
	FOR EACH ROW EXECUTE FUNCTION edgeaudit_append_only();
CREATE TRIGGER batches_no_truncate BEFORE TRUNCATE ON batches
	FOR EACH STATEMENT EXECUTE FUNCTION edgeaudit_append_only();
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
	FOR EACH ROW EXECUTE FUNCTION edgeaudit_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
	FOR EACH STATEMENT EXECUTE FUNCTION edgeaudit_append_only();
CREATE TRIGGER heads_no_delete BEFORE DELETE ON heads
	FOR EACH ROW EXECUTE FUNCTION edgeaudit_append_only();
CREATE TRIGGER heads_no_truncate BEFORE TRUNCATE ON heads
	FOR EACH STATEMENT EXECUTE FUNCTION edgeaudit_append_only();

-- The role receivers connect as (grant it to a login role, or ALTER ROLE ... LOGIN):
-- it reads and inserts, and moves heads, nothing else. Roles are per cluster, so it
-- may exist already (another database, a concurrent migration of one).
DO $$
BEGIN
	IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'edgeaudit_writer') THEN
		BEGIN
			CREATE ROLE edgeaudit_writer NOLOGIN;
		EXCEPTION WHEN duplicate_object OR unique_violation THEN
			NULL; -- created by a concurrent migration in another database
		END;
	END IF;
END;
$$;
REVOKE ALL ON heads, batches, events FROM PUBLIC;
GRANT SELECT, INSERT ON batches, events TO edgeaudit_writer;
GRANT SELECT, INSERT, UPDATE ON heads TO edgeaudit_writer;
-- So that Migrate, connected as the writer, finds every version applied and does nothing.
GRANT SELECT ON schema_migrations TO edgeaudit_writer;
