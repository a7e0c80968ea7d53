-- Exactly-once money (DESIGN.md rule 12): a reservation made for a call that goes upstream right
-- after admission is marked sent. When its lease expires unresolved it is charged its ceiling
-- (state 'unknown_outcome', one usage row with that outcome) instead of returning to the budget;
-- a late settle or release corrects that row to the real cost.

ALTER TABLE reservations ADD COLUMN sent boolean NOT NULL DEFAULT false;
ALTER TABLE reservations DROP CONSTRAINT reservations_state_check;
ALTER TABLE reservations ADD CONSTRAINT reservations_state_check
    CHECK (state IN ('pending', 'settled', 'released', 'expired', 'unknown_outcome'));
