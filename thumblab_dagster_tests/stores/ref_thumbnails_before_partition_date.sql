-- Test fixture: thumblab_dagster/sql/ref_thumbnails.sql as shipped before partition_date (commit 4e9967a),
-- the schema existing deployments hold and `thumblab supabase-migrate` must upgrade in place.
-- thumblab: the shared reference store in Supabase (Postgres + pgvector).
-- Rendered with the embedding dimension by `thumblab supabase-schema --dim N`; safe to run twice.

create extension if not exists vector;

create table if not exists ref_thumbnails (
    video_id       text primary key,
    niche          text not null,
    title          text,
    thumbnail_url  text,
    views_per_hour double precision,
    view_count     bigint,
    published_at   timestamptz,
    channel_title  text,
    description    text,
    embedding      vector({dim}) not null,
    model          text not null,
    collected_at   timestamptz not null default now()
);

create index if not exists ref_thumbnails_niche_idx on ref_thumbnails (niche);
create index if not exists ref_thumbnails_collected_at_idx on ref_thumbnails (collected_at);
create index if not exists ref_thumbnails_embedding_idx on ref_thumbnails using hnsw (embedding vector_cosine_ops);

-- The niche's closest references by cosine similarity (Supabase RPC: POST /rest/v1/rpc/match_ref_thumbnails).
create or replace function match_ref_thumbnails(query_embedding vector({dim}), match_niche text,
                                                match_count int default 10)
returns table (video_id text, similarity double precision, title text, thumbnail_url text,
               views_per_hour double precision)
language sql stable
set hnsw.ef_search = 200  -- the niche filter is applied after the HNSW scan: look wider than 40
as $$
    select r.video_id, 1 - (r.embedding <=> query_embedding) as similarity, r.title, r.thumbnail_url,
           r.views_per_hour
    from ref_thumbnails r
    where r.niche = match_niche
    order by r.embedding <=> query_embedding
    limit match_count;
$$;

-- Leave-one-out top-k mean similarity of a fixed sample of the niche's rows: the reference a
-- remote similarity percentile ranks an upload's top-k mean against.
create or replace function ref_thumbnails_reference_scores(match_niche text, match_k int default 10,
                                                           sample_size int default 500)
returns table (video_id text, score double precision)
language sql stable
set hnsw.ef_search = 200
as $$
    select s.video_id,
           (select avg(1 - (n.embedding <=> s.embedding))
            from (select o.embedding from ref_thumbnails o
                  where o.niche = match_niche and o.video_id <> s.video_id
                  order by o.embedding <=> s.embedding
                  limit match_k) n) as score
    from (select t.video_id, t.embedding from ref_thumbnails t
          where t.niche = match_niche
          order by md5(t.video_id)
          limit sample_size) s;
$$;

-- Supabase grants the public anon/authenticated roles access to new tables in "public": the
-- reference library is written by the pipeline's service role (which bypasses row-level
-- security) only. Add a select policy for the roles that should read it.
alter table ref_thumbnails enable row level security;
revoke execute on function match_ref_thumbnails(vector, text, int) from public;
revoke execute on function ref_thumbnails_reference_scores(text, int, int) from public;
do $$
begin
    if exists (select 1 from pg_roles where rolname = 'anon') then
        revoke all on ref_thumbnails from anon, authenticated;
        revoke execute on function match_ref_thumbnails(vector, text, int) from anon, authenticated;
        revoke execute on function ref_thumbnails_reference_scores(text, int, int) from anon, authenticated;
        grant execute on function match_ref_thumbnails(vector, text, int) to service_role;
        grant execute on function ref_thumbnails_reference_scores(text, int, int) to service_role;
    end if;
end
$$;
