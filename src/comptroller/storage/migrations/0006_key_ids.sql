-- Spend per API key (issue 15): a hold keeps the id of the key its call came with
-- (Attribution.key_id), and the usage row keeps it, with whether the conversation was a registered
-- shared group, so reports can slice spend by key and by shared group.

ALTER TABLE reservations ADD COLUMN key_id text;
ALTER TABLE usage_log ADD COLUMN conversation_shared boolean NOT NULL DEFAULT false;
ALTER TABLE usage_log ADD COLUMN key_id text;
