-- The BFF's registration as reference doc 001 gives it (issue 14, item 7):
-- `{bff_url, public_ip}`. Rows registered before carry an empty address.
ALTER TABLE bff_registrations ADD COLUMN public_ip TEXT NOT NULL DEFAULT '';
