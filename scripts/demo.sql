-- A table to watch on first run; idempotent.
CREATE TABLE IF NOT EXISTS public.orders (
    id         bigserial PRIMARY KEY,
    status     text NOT NULL DEFAULT 'open',
    total      numeric(12,2) NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
