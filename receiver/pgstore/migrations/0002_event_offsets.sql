-- 0002: cheaper appends (receiver/README.md, "Tables").
-- 1. An event's bytes are stored once, in its batch's wire column: the event row keeps
--    the indexed fields and where the bytes are (body_off, body_len: byte offset and
--    length in batches.wire). Rows stored before keep their body. The view
--    event_bodies puts the two back together for SQL readers.
-- 2. One GIN index over keys (text[]: 'p:'||patient, 'u:'||actor_user, 'a:'||action
--    and 'a:' plus each prefix of action that ends with a dot, 's:'||each study token)
--    replaces the btrees (patient, time), (actor_user, time), (action, outcome, time),
--    (site, device, time) and the GIN on study: one btree insert per event per index
--    was most of the server's CPU per batch. A BRIN serves time ranges; the primary
--    key's (site, device) prefix serves a device.

ALTER TABLE events ALTER COLUMN body DROP NOT NULL;
ALTER TABLE events ADD COLUMN body_off integer, ADD COLUMN body_len integer, ADD COLUMN keys text[] COLLATE "C";
-- NOT VALID: every earlier row has a body; the check holds for every row written from now.
ALTER TABLE events ADD CONSTRAINT events_body_or_offsets
	CHECK (body IS NOT NULL OR (body_off >= 0 AND body_len >= 0)) NOT VALID;

-- keys of the rows stored before, as receivers compute them (pgstore eventKeys). The
-- append-only trigger is off for this one statement of the migration, in its
-- transaction, run by the tables' owner.
CREATE FUNCTION edgeaudit_keys_0002(action text, patient text, actor_user text, study text[]) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
	k text[] := '{}';
	i int;
BEGIN
	IF patient IS NOT NULL THEN k := k || ('p:' || patient); END IF;
	IF actor_user IS NOT NULL THEN k := k || ('u:' || actor_user); END IF;
	IF action IS NOT NULL THEN
		k := k || ('a:' || action);
		FOR i IN 1 .. length(action) - 1 LOOP
			IF substr(action, i, 1) = '.' THEN k := k || ('a:' || left(action, i)); END IF;
		END LOOP;
	END IF;
	IF study IS NOT NULL THEN
		k := k || ARRAY(SELECT 's:' || s FROM unnest(study) s);
	END IF;
	IF cardinality(k) = 0 THEN RETURN NULL; END IF;
	RETURN k;
END;
$$;
ALTER TABLE events DISABLE TRIGGER events_append_only;
UPDATE events SET keys = edgeaudit_keys_0002(action, patient, actor_user, study);
ALTER TABLE events ENABLE TRIGGER events_append_only;
DROP FUNCTION edgeaudit_keys_0002;

DROP INDEX events_patient_time;
DROP INDEX events_user_time;
DROP INDEX events_action_outcome_time;
DROP INDEX events_device_time;
DROP INDEX events_study;
CREATE INDEX events_keys ON events USING gin (keys) WHERE keys IS NOT NULL;
CREATE INDEX events_time_brin ON events USING brin (time);

-- wire is no longer compressed (new rows only): substring() then reads only the TOAST
-- chunks that hold an event instead of decompressing the whole batch for each one, and
-- the server does no lz4 per batch.
ALTER TABLE batches ALTER COLUMN wire SET STORAGE EXTERNAL;

-- Every event with its exact bytes, whichever way it was stored.
CREATE VIEW event_bodies AS
SELECT e.site, e.device, e.chain, e.seq, e.idx, e.time, e.action, e.outcome, e.patient, e.actor_user, e.study, e.keys,
	coalesce(e.body, substring(b.wire FROM e.body_off + 1 FOR e.body_len)) AS body
FROM events e
JOIN batches b ON b.site = e.site AND b.device = e.device AND b.chain = e.chain AND b.seq = e.seq;
REVOKE ALL ON event_bodies FROM PUBLIC;
GRANT SELECT ON event_bodies TO edgeaudit_writer;
