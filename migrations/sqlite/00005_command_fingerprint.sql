-- +goose Up
-- The fingerprint (BLAKE3-256) of a command's parameters, recorded with its
-- command_id: a command_id reused with other parameters is refused instead
-- of being answered with the first command's reply. NULL for commands
-- recorded before this migration; those keep answering their first reply.
ALTER TABLE commands ADD COLUMN fingerprint BLOB;

-- +goose Down
ALTER TABLE commands DROP COLUMN fingerprint;
