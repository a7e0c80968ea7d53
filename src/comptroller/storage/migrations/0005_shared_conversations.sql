-- A hold keeps whether its conversation is a registered shared group (Attribution.conversation_shared),
-- so a settle counts the spend on the group's own scope (ns|group) in the breakers and kill-switch
-- windows, as the admission did, not on the tenant's (ns|tenant|group). DESIGN.md rules 1, 5, 13.

ALTER TABLE reservations ADD COLUMN conversation_shared boolean NOT NULL DEFAULT false;
