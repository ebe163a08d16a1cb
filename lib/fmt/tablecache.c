/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The table cache: see tablecache.h for the model and the ordering rules. */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "fmt/tablecache.h"
#include "io/io.h"
#include "util/util.h"

struct tc_page {
        tc_table *table;
        uint64_t index;
        uint8_t *data;
        uint32_t len;              /* bytes held: a multiple of TC_SECTOR */
        uint32_t cap;              /* bytes allocated for data */
        uint64_t charged;          /* what this page counts against the budget */
        unsigned pins;
        uint32_t n_dirty;          /* dirty sectors */
        bool after_data;           /* flush the io before writing this page */
        bool mark;                 /* write-back: wanted by this write-back */
        tc_page *lru_prev, *lru_next;
        tc_page *dirty_prev, *dirty_next;
        tc_page **deps;            /* dirty pages to write (and flush) before this one */
        size_t n_deps, n_deps_alloc;
        uint64_t dirty[];          /* bit per sector of the page */
};

struct tc_table {
        tc_budget *budget;
        vdisk_io *io;
        uint64_t offset, size;
        uint32_t page_size;
        tc_entry entry;
        bool zero_past_eof;
        int (*before_write)(void *user);
        void *user;
        const char *name;
        tc_page **pages;           /* directory: n_pages slots, NULL = not held */
        uint64_t n_pages;
        uint64_t dir_charged;
        uint64_t n_dirty_pages;
        tc_table *prev, *next;
};

struct tc_budget {
        unsigned n_ref;
        uint64_t limit, held, peak;
        uint64_t hits, misses, evictions, early_writebacks;
        tc_page *lru_head, *lru_tail;      /* head = least recently used */
        tc_page *dirty_head;
        uint64_t n_dirty_pages;
        tc_table *tables;
        bool writing_back;
};

/* ---------------------------------------------------------------- entries */

unsigned tc_entry_size(tc_entry entry) {
        switch (entry) {
        case TC_RAW:
                return 0;
        case TC_LE32:
        case TC_BE32:
                return 4;
        case TC_LE64:
        case TC_BE64:
                return 8;
        }
        assert(!"bad tc_entry");
        return 0;
}

static void put_entry(uint8_t *p, tc_entry entry, uint64_t v) {
        switch (entry) {
        case TC_RAW:
                *p = (uint8_t) v;
                break;
        case TC_LE32:
                put_le32(p, (uint32_t) v);
                break;
        case TC_BE32:
                put_be32(p, (uint32_t) v);
                break;
        case TC_LE64:
                put_le64(p, v);
                break;
        case TC_BE64:
                put_be64(p, v);
                break;
        }
}

static uint64_t get_entry(const uint8_t *p, tc_entry entry) {
        switch (entry) {
        case TC_RAW:
                return *p;
        case TC_LE32:
                return get_le32(p);
        case TC_BE32:
                return get_be32(p);
        case TC_LE64:
                return get_le64(p);
        case TC_BE64:
                return get_be64(p);
        }
        return 0;
}

/* The stride of the fill pattern: one entry, or one byte for raw tables. */
static unsigned pattern_size(tc_entry entry) {
        return entry == TC_RAW ? 1 : tc_entry_size(entry);
}

/* ---------------------------------------------------------------- budget */

int tc_budget_new(uint64_t limit, tc_budget **ret) {
        tc_budget *b;

        assert(ret);

        if (limit == 0)
                limit = TC_BUDGET_DEFAULT;
        if (limit < TC_BUDGET_MIN)
                return vdisk_error(-EINVAL, "metadata budget of %" PRIu64 " bytes is below the minimum "
                                   "of %" PRIu64 " bytes", limit, TC_BUDGET_MIN);
        b = calloc(1, sizeof *b);
        if (!b)
                return vdisk_error(-ENOMEM, "out of memory");
        b->n_ref = 1;
        b->limit = limit;
        *ret = b;
        return 0;
}

tc_budget *tc_budget_ref(tc_budget *b) {
        if (b)
                b->n_ref++;
        return b;
}

tc_budget *tc_budget_unref(tc_budget *b) {
        if (!b)
                return NULL;
        assert(b->n_ref > 0);
        if (--b->n_ref > 0)
                return NULL;
        /* Every table holds a reference. */
        assert(!b->tables);
        free(b);
        return NULL;
}

uint64_t tc_budget_limit(const tc_budget *b) {
        return b->limit;
}

void tc_budget_stats(const tc_budget *b, vdisk_metadata_stats *ret) {
        assert(b);
        assert(ret);

        ret->budget = b->limit;
        ret->held = b->held;
        ret->peak = b->peak;
        ret->hits = b->hits;
        ret->misses = b->misses;
        ret->evictions = b->evictions;
        ret->early_writebacks = b->early_writebacks;
}

static void charge(tc_budget *b, uint64_t bytes) {
        b->held += bytes;
        b->peak = MAX(b->peak, b->held);
}

static void uncharge(tc_budget *b, uint64_t bytes) {
        assert(b->held >= bytes);
        b->held -= bytes;
}

/* ---------------------------------------------------------------- page lists */

static void lru_unlink(tc_budget *b, tc_page *pg) {
        if (pg->lru_prev)
                pg->lru_prev->lru_next = pg->lru_next;
        else
                b->lru_head = pg->lru_next;
        if (pg->lru_next)
                pg->lru_next->lru_prev = pg->lru_prev;
        else
                b->lru_tail = pg->lru_prev;
        pg->lru_prev = pg->lru_next = NULL;
}

static void lru_append(tc_budget *b, tc_page *pg) {
        pg->lru_prev = b->lru_tail;
        pg->lru_next = NULL;
        if (b->lru_tail)
                b->lru_tail->lru_next = pg;
        else
                b->lru_head = pg;
        b->lru_tail = pg;
}

static void lru_touch(tc_budget *b, tc_page *pg) {
        if (b->lru_tail == pg)
                return;
        lru_unlink(b, pg);
        lru_append(b, pg);
}

static void dirty_link(tc_page *pg) {
        tc_budget *b = pg->table->budget;

        pg->dirty_prev = NULL;
        pg->dirty_next = b->dirty_head;
        if (b->dirty_head)
                b->dirty_head->dirty_prev = pg;
        b->dirty_head = pg;
        b->n_dirty_pages++;
        pg->table->n_dirty_pages++;
}

static void dirty_unlink(tc_page *pg) {
        tc_budget *b = pg->table->budget;

        if (pg->dirty_prev)
                pg->dirty_prev->dirty_next = pg->dirty_next;
        else
                b->dirty_head = pg->dirty_next;
        if (pg->dirty_next)
                pg->dirty_next->dirty_prev = pg->dirty_prev;
        pg->dirty_prev = pg->dirty_next = NULL;
        b->n_dirty_pages--;
        pg->table->n_dirty_pages--;
}

/* No dirty page depends on pg any more (it became clean or goes away). */
static void forget_dependents(tc_budget *b, tc_page *pg) {
        for (tc_page *q = b->dirty_head; q; q = q->dirty_next)
                for (size_t i = 0; i < q->n_deps;)
                        if (q->deps[i] == pg)
                                q->deps[i] = q->deps[--q->n_deps];
                        else
                                i++;
}

/* The page left the dirty list: it waits for nothing, nothing waits for it. */
static void page_cleaned(tc_page *pg) {
        pg->n_dirty = 0;
        pg->after_data = false;
        pg->n_deps = 0;
        dirty_unlink(pg);
        forget_dependents(pg->table->budget, pg);
}

static void mark_clean(tc_page *pg) {
        uint32_t words = DIV_ROUND_UP(pg->table->page_size / TC_SECTOR, 64u);

        if (pg->n_dirty == 0)
                return;
        memset(pg->dirty, 0, words * sizeof(uint64_t));
        page_cleaned(pg);
}

static void page_drop(tc_page *pg) {
        tc_table *t = pg->table;
        tc_budget *b = t->budget;

        assert(pg->pins == 0);
        mark_clean(pg);
        lru_unlink(b, pg);
        t->pages[pg->index] = NULL;
        uncharge(b, pg->charged);
        free(pg->deps);
        free(pg->data);
        free(pg);
}

static uint64_t page_cost(uint32_t cap) {
        return sizeof(tc_page) + DIV_ROUND_UP(cap / TC_SECTOR, 64u) * sizeof(uint64_t) + cap;
}

static int writeback(tc_budget *b, tc_table *only);

/* Makes room for `need` more bytes: drops clean unpinned pages, least
 * recently used first; with none left, writes the dirty ones back (in order)
 * once and tries again. */
static int make_room(tc_budget *b, uint64_t need) {
        bool wrote = false;
        int r;

        while (b->held + need > b->limit) {
                tc_page *victim = NULL;

                for (tc_page *pg = b->lru_head; pg; pg = pg->lru_next)
                        if (pg->pins == 0 && pg->n_dirty == 0) {
                                victim = pg;
                                break;
                        }
                if (victim) {
                        page_drop(victim);
                        b->evictions++;
                        continue;
                }
                if (!wrote && b->dirty_head && !b->writing_back) {
                        b->early_writebacks++;
                        r = writeback(b, NULL);
                        if (r < 0)
                                return r;
                        wrote = true;
                        continue;
                }
                return vdisk_error(-E2BIG, "the metadata budget of %" PRIu64 " bytes is exhausted "
                                   "(%" PRIu64 " bytes held, %" PRIu64 " more needed, nothing can be evicted)",
                                   b->limit, b->held, need);
        }
        return 0;
}

int tc_budget_charge(tc_budget *b, uint64_t bytes) {
        int r;

        assert(b);

        if (bytes > b->limit)
                return vdisk_error(-E2BIG, "%" PRIu64 " bytes of metadata exceed the budget of %" PRIu64
                                   " bytes", bytes, b->limit);
        r = make_room(b, bytes);
        if (r < 0)
                return r;
        charge(b, bytes);
        return 0;
}

void tc_budget_uncharge(tc_budget *b, uint64_t bytes) {
        assert(b);
        uncharge(b, bytes);
}

int tc_budget_set_limit(tc_budget *b, uint64_t limit) {
        assert(b);

        if (limit == 0)
                limit = TC_BUDGET_DEFAULT;
        if (limit < TC_BUDGET_MIN)
                return vdisk_error(-EINVAL, "metadata budget of %" PRIu64 " bytes is below the minimum "
                                   "of %" PRIu64 " bytes", limit, TC_BUDGET_MIN);
        b->limit = limit;
        /* Best effort: what is dirty or pinned now goes when it can. */
        for (tc_page *pg = b->lru_head, *next; pg && b->held > b->limit; pg = next) {
                next = pg->lru_next;
                if (pg->pins == 0 && pg->n_dirty == 0) {
                        page_drop(pg);
                        b->evictions++;
                }
        }
        return 0;
}

/* ---------------------------------------------------------------- write-back */

typedef struct io_set {
        vdisk_io **v;
        size_t n, allocated;
} io_set;

static int io_set_add(io_set *s, vdisk_io *io) {
        for (size_t i = 0; i < s->n; i++)
                if (s->v[i] == io)
                        return 0;
        if (s->n == s->allocated) {
                size_t a = MAX(s->allocated * 2, (size_t) 4);
                vdisk_io **v = reallocarray(s->v, a, sizeof *v);
                if (!v)
                        return -ENOMEM;
                s->v = v;
                s->allocated = a;
        }
        s->v[s->n++] = io;
        return 0;
}

static int page_write(tc_page *pg) {
        tc_table *t = pg->table;
        uint64_t base = t->offset + pg->index * t->page_size;
        uint32_t n = pg->len / TC_SECTOR;
        int r;

        for (uint32_t s = 0; s < n;) {
                uint32_t e;

                if (!bitmap_get(pg->dirty, s)) {
                        s++;
                        continue;
                }
                for (e = s + 1; e < n && bitmap_get(pg->dirty, e); e++)
                        ;
                r = io_pwrite(t->io, pg->data + (size_t) s * TC_SECTOR, (size_t) (e - s) * TC_SECTOR,
                              base + (uint64_t) s * TC_SECTOR);
                if (r < 0)
                        return r;
                s = e;
        }
        return 0;
}

/* Writes back the dirty pages of `only` (all tables when NULL) and what they
 * depend on, in rounds: the ready pages (no dirty dependency left) of a round
 * are written after their data flushes and table hooks, then each io written
 * is flushed, and only then are they clean. */
static int writeback(tc_budget *b, tc_table *only) {
        _cleanup_free_ tc_page **ready = NULL;
        io_set ios = {};
        bool changed;
        int r = 0;

        if (!b->dirty_head)
                return 0;
        assert(!b->writing_back);

        for (tc_page *pg = b->dirty_head; pg; pg = pg->dirty_next)
                pg->mark = !only || pg->table == only;
        do {
                changed = false;
                for (tc_page *pg = b->dirty_head; pg; pg = pg->dirty_next)
                        if (pg->mark)
                                for (size_t i = 0; i < pg->n_deps; i++)
                                        if (!pg->deps[i]->mark) {
                                                pg->deps[i]->mark = true;
                                                changed = true;
                                        }
        } while (changed);

        ready = malloc(MAX(b->n_dirty_pages, (uint64_t) 1) * sizeof(tc_page *));
        if (!ready)
                return vdisk_error(-ENOMEM, "out of memory");

        b->writing_back = true;
        for (;;) {
                size_t n_ready = 0;
                bool any = false;

                for (tc_page *pg = b->dirty_head; pg; pg = pg->dirty_next) {
                        if (!pg->mark)
                                continue;
                        any = true;
                        if (pg->n_deps == 0)
                                ready[n_ready++] = pg;
                }
                if (!any)
                        break;
                if (n_ready == 0) {
                        r = vdisk_error(-EDEADLK, "table cache: the dirty pages depend on each other in a cycle");
                        break;
                }

                /* Data before the tables that point at it. */
                ios.n = 0;
                for (size_t i = 0; i < n_ready && r >= 0; i++)
                        if (ready[i]->after_data)
                                r = io_set_add(&ios, ready[i]->table->io);
                for (size_t i = 0; i < ios.n && r >= 0; i++)
                        r = io_flush(ios.v[i]);
                /* after_data stays set until the page is clean: should
                 * this round fail later, the retry flushes again first. */
                if (r < 0)
                        break;

                /* The owners' hooks, once per table and round. */
                for (size_t i = 0; i < n_ready && r >= 0; i++) {
                        tc_table *t = ready[i]->table;
                        bool seen = false;

                        if (!t->before_write)
                                continue;
                        for (size_t j = 0; j < i && !seen; j++)
                                seen = ready[j]->table == t;
                        if (!seen)
                                r = t->before_write(t->user);
                }
                if (r < 0)
                        break;

                ios.n = 0;
                for (size_t i = 0; i < n_ready && r >= 0; i++) {
                        r = page_write(ready[i]);
                        if (r >= 0)
                                r = io_set_add(&ios, ready[i]->table->io);
                }
                for (size_t i = 0; i < ios.n && r >= 0; i++)
                        r = io_flush(ios.v[i]);
                if (r < 0)
                        break;

                for (size_t i = 0; i < n_ready; i++) {
                        ready[i]->mark = false;
                        mark_clean(ready[i]);
                }
        }
        b->writing_back = false;
        free(ios.v);
        return r;
}

int tc_budget_flush(tc_budget *b) {
        assert(b);
        return writeback(b, NULL);
}

int tc_table_flush(tc_table *t) {
        assert(t);
        if (t->n_dirty_pages == 0)
                return 0;
        return writeback(t->budget, t);
}

/* ---------------------------------------------------------------- tables */

static uint64_t table_n_pages(uint64_t size, uint32_t page_size) {
        return DIV_ROUND_UP(ALIGN_UP(size, (uint64_t) TC_SECTOR), (uint64_t) page_size);
}

/* Bytes page `index` holds: the table's bytes in it, rounded up to a sector. */
static uint32_t page_len(const tc_table *t, uint64_t index) {
        uint64_t start = index * t->page_size, end = ALIGN_UP(t->size, (uint64_t) TC_SECTOR);

        assert(start < end);
        return (uint32_t) MIN((uint64_t) t->page_size, end - start);
}

/* Resizes the directory to n slots (charging the difference). */
static int directory_resize(tc_table *t, uint64_t n) {
        uint64_t bytes;
        tc_page **v;
        int r;

        if (MUL_OVERFLOW(MAX(n, (uint64_t) 1), (uint64_t) sizeof(tc_page *), &bytes) || bytes > SIZE_MAX)
                return vdisk_error(-EFBIG, "%s: table too large", t->name);
        if (bytes > t->dir_charged) {
                r = tc_budget_charge(t->budget, bytes - t->dir_charged);
                if (r < 0)
                        return vdisk_error(r, "%s: %" PRIu64 " bytes of table in %" PRIu32 "-byte pages: %s",
                                           t->name, t->size, t->page_size, vdisk_last_error());
        }
        v = realloc(t->pages, (size_t) bytes);
        if (!v) {
                if (bytes > t->dir_charged)
                        uncharge(t->budget, bytes - t->dir_charged);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        for (uint64_t i = t->n_pages; i < n; i++)
                v[i] = NULL;
        if (bytes < t->dir_charged)
                uncharge(t->budget, t->dir_charged - bytes);
        t->dir_charged = bytes;
        t->pages = v;
        t->n_pages = n;
        return 0;
}

int tc_table_new(tc_budget *b, vdisk_io *io, const tc_table_params *p, tc_table **ret) {
        tc_table *t;
        int r;

        assert(b);
        assert(io);
        assert(p);
        assert(ret);
        assert(IS_POWER_OF_2(p->page_size) && p->page_size >= TC_SECTOR && p->page_size <= TC_PAGE_MAX);
        assert(p->entry == TC_RAW || p->size % tc_entry_size(p->entry) == 0);

        if (p->offset > UINT64_MAX - ALIGN_UP(p->size, (uint64_t) TC_SECTOR) || p->size > UINT64_MAX / 2)
                return vdisk_error(-EFBIG, "%s: table range overflows", p->name ?: "table");

        t = calloc(1, sizeof *t);
        if (!t)
                return vdisk_error(-ENOMEM, "out of memory");
        *t = (tc_table) {
                .budget = tc_budget_ref(b),
                .io = io,
                .offset = p->offset,
                .size = p->size,
                .page_size = p->page_size,
                .entry = p->entry,
                .zero_past_eof = p->zero_past_eof,
                .before_write = p->before_write,
                .user = p->user,
                .name = p->name ?: "table",
        };
        t->next = b->tables;
        if (b->tables)
                b->tables->prev = t;
        b->tables = t;

        r = directory_resize(t, table_n_pages(p->size, p->page_size));
        if (r < 0) {
                tc_table_free(t);
                return r;
        }
        *ret = t;
        return 0;
}

tc_table *tc_table_free(tc_table *t) {
        tc_budget *b;

        if (!t)
                return NULL;
        b = t->budget;
        for (uint64_t i = 0; i < t->n_pages; i++)
                if (t->pages[i]) {
                        t->pages[i]->pins = 0;
                        page_drop(t->pages[i]);
                }
        uncharge(b, t->dir_charged);
        free(t->pages);
        if (t->prev)
                t->prev->next = t->next;
        else
                b->tables = t->next;
        if (t->next)
                t->next->prev = t->prev;
        free(t);
        tc_budget_unref(b);
        return NULL;
}

uint64_t tc_table_size(const tc_table *t) {
        return t->size;
}

uint64_t tc_table_offset(const tc_table *t) {
        return t->offset;
}

uint64_t tc_table_entries(const tc_table *t) {
        return t->entry == TC_RAW ? t->size : t->size / tc_entry_size(t->entry);
}

bool tc_table_is_dirty(const tc_table *t) {
        return t->n_dirty_pages > 0;
}

/* A new page object with room for `cap` bytes (not in any list yet). */
static int page_alloc(tc_table *t, uint64_t index, uint32_t cap, tc_page **ret) {
        size_t words = DIV_ROUND_UP(t->page_size / TC_SECTOR, 64u);
        uint64_t cost = page_cost(t->page_size) - t->page_size + cap;
        tc_page *pg;
        int r;

        r = make_room(t->budget, cost);
        if (r < 0)
                return r;
        pg = calloc(1, sizeof *pg + words * sizeof(uint64_t));
        if (!pg)
                return vdisk_error(-ENOMEM, "out of memory");
        pg->data = malloc(cap);
        if (!pg->data) {
                free(pg);
                return vdisk_error(-ENOMEM, "out of memory");
        }
        pg->table = t;
        pg->index = index;
        pg->cap = cap;
        pg->charged = cost;
        charge(t->budget, cost);
        *ret = pg;
        return 0;
}

static void page_insert(tc_table *t, tc_page *pg) {
        t->pages[pg->index] = pg;
        lru_append(t->budget, pg);
}

static int page_load(tc_table *t, uint64_t index, tc_page **ret) {
        uint64_t start = index * t->page_size, table_bytes, file_size;
        uint32_t len = page_len(t, index);
        tc_page *pg;
        int r;

        table_bytes = MIN((uint64_t) len, t->size - start);
        if (!t->zero_past_eof) {
                /* Without asking the file per page where its size is known */
                r = io_covers(t->io, t->offset + start + table_bytes, &file_size);
                if (r < 0)
                        return r;
                if (r == 0)
                        return vdisk_error(-EUCLEAN, "%s at %" PRIu64 " (%" PRIu64 " bytes) extends past the end "
                                           "of the file (%" PRIu64 " bytes)", t->name, t->offset, t->size,
                                           file_size);
        }
        r = page_alloc(t, index, len, &pg);
        if (r < 0)
                return r;
        pg->len = len;
        r = io_pread_zerofill(t->io, pg->data, len, t->offset + start);
        if (r < 0) {
                uncharge(t->budget, pg->charged);
                free(pg->data);
                free(pg);
                return r;
        }
        page_insert(t, pg);
        *ret = pg;
        return 0;
}

static int page_find(tc_table *t, uint64_t index, tc_page **ret) {
        tc_page *pg;
        int r;

        assert(index < t->n_pages);

        pg = t->pages[index];
        if (pg) {
                t->budget->hits++;
                lru_touch(t->budget, pg);
                *ret = pg;
                return 0;
        }
        t->budget->misses++;
        r = page_load(t, index, &pg);
        if (r < 0)
                return r;
        *ret = pg;
        return 0;
}

static void page_mark(tc_page *pg, uint32_t off, uint32_t len, uint32_t flags) {
        assert(len > 0);
        assert(off + len <= pg->len);

        if (pg->n_dirty == 0)
                dirty_link(pg);
        for (uint32_t s = off / TC_SECTOR; s <= (off + len - 1) / TC_SECTOR; s++)
                if (!bitmap_get(pg->dirty, s)) {
                        bitmap_set(pg->dirty, s);
                        pg->n_dirty++;
                }
        if (flags & TC_AFTER_DATA)
                pg->after_data = true;
}

int tc_get(tc_table *t, uint64_t i, uint64_t *ret) {
        unsigned es = tc_entry_size(t->entry);
        uint64_t off = i * es;
        tc_page *pg;
        int r;

        assert(es > 0);
        assert(i < t->size / es);
        assert(ret);

        r = page_find(t, off / t->page_size, &pg);
        if (r < 0)
                return r;
        *ret = get_entry(pg->data + off % t->page_size, t->entry);
        return 0;
}

int tc_set(tc_table *t, uint64_t i, uint64_t v, uint32_t flags) {
        unsigned es = tc_entry_size(t->entry);
        uint64_t off = i * es;
        uint32_t in;
        tc_page *pg;
        int r;

        assert(es > 0);
        assert(i < t->size / es);

        r = page_find(t, off / t->page_size, &pg);
        if (r < 0)
                return r;
        in = (uint32_t) (off % t->page_size);
        if (get_entry(pg->data + in, t->entry) == v)
                return 0;
        put_entry(pg->data + in, t->entry, v);
        page_mark(pg, in, es, flags);
        return 0;
}

/* The first index in [i, n) of the page bytes p whose entry is not v (n
 * when none). Compares eight bytes at a time against the entry's pattern
 * (entries are 4 or 8 bytes: a word holds whole entries when aligned). */
static uint64_t page_find_other(const uint8_t *p, unsigned es, tc_entry entry, uint64_t i, uint64_t n,
                                uint64_t v) {
        uint8_t pat[8];
        uint64_t w;

        for (unsigned k = 0; k < 8; k += es)
                put_entry(pat + k, entry, v);
        memcpy(&w, pat, 8);
        /* Entry by entry to the first 8-byte boundary, word by word, then
         * entry by entry to find which one differs. */
        while (i < n && (i * es) % 8 != 0) {
                if (get_entry(p + i * es, entry) != v)
                        return i;
                i++;
        }
        while (i + 8 / es <= n) {
                uint64_t x;

                memcpy(&x, p + i * es, 8);
                if (x != w)
                        break;
                i += 8 / es;
        }
        for (; i < n; i++)
                if (get_entry(p + i * es, entry) != v)
                        return i;
        return n;
}

int tc_find_other(tc_table *t, uint64_t from, uint64_t to, uint64_t v, uint64_t *ret) {
        unsigned es = tc_entry_size(t->entry);
        uint64_t per_page, i = from;
        int r;

        assert(es > 0);
        assert(from <= to && to <= t->size / es);
        assert(ret);

        per_page = t->page_size / es;
        while (i < to) {
                uint64_t page = i / per_page, first = page * per_page, end = MIN(to, first + per_page), k;
                tc_page *pg;

                r = page_find(t, page, &pg);
                if (r < 0)
                        return r;
                k = page_find_other(pg->data, es, t->entry, i - first, end - first, v);
                if (k < end - first) {
                        *ret = first + k;
                        return 0;
                }
                i = end;
        }
        *ret = to;
        return 0;
}

int tc_read(tc_table *t, uint64_t offset, void *buf, size_t len) {
        uint8_t *p = buf;
        int r;

        assert(offset <= t->size && len <= t->size - offset);

        while (len > 0) {
                uint32_t in = (uint32_t) (offset % t->page_size);
                size_t n = MIN(len, (size_t) (t->page_size - in));
                tc_page *pg;

                r = page_find(t, offset / t->page_size, &pg);
                if (r < 0)
                        return r;
                memcpy(p, pg->data + in, n);
                p += n;
                offset += n;
                len -= n;
        }
        return 0;
}

int tc_write(tc_table *t, uint64_t offset, const void *buf, size_t len, uint32_t flags) {
        const uint8_t *p = buf;
        int r;

        assert(offset <= t->size && len <= t->size - offset);

        while (len > 0) {
                uint32_t in = (uint32_t) (offset % t->page_size);
                size_t n = MIN(len, (size_t) (t->page_size - in));
                tc_page *pg;

                r = page_find(t, offset / t->page_size, &pg);
                if (r < 0)
                        return r;
                if (memcmp(pg->data + in, p, n) != 0) {
                        memcpy(pg->data + in, p, n);
                        page_mark(pg, in, (uint32_t) n, flags);
                }
                p += n;
                offset += n;
                len -= n;
        }
        return 0;
}

int tc_table_resize(tc_table *t, uint64_t size, uint64_t fill) {
        unsigned ps = pattern_size(t->entry);
        uint64_t old_size = t->size, old_held_end, from, to, n_pages;
        uint64_t old_n_pages = t->n_pages;
        int r;

        assert(t);
        assert(size % ps == 0);

        if (size == old_size)
                return 0;
        if (t->offset > UINT64_MAX - ALIGN_UP(size, (uint64_t) TC_SECTOR) || size > UINT64_MAX / 2)
                return vdisk_error(-EFBIG, "%s: table range overflows", t->name);

        old_held_end = ALIGN_UP(old_size, (uint64_t) TC_SECTOR);
        from = MIN(old_size, size);
        to = ALIGN_UP(size, (uint64_t) TC_SECTOR);
        n_pages = table_n_pages(size, t->page_size);

        /* The page holding the old end keeps the bytes before it: load it
         * while the table still has its old size. */
        if (size > old_size && old_size % t->page_size != 0 && old_size / t->page_size < old_n_pages) {
                tc_page *pg;

                r = page_find(t, old_size / t->page_size, &pg);
                if (r < 0)
                        return r;
        }

        if (n_pages > old_n_pages) {
                r = directory_resize(t, n_pages);
                if (r < 0)
                        return r;
        } else {
                for (uint64_t i = n_pages; i < old_n_pages; i++)
                        if (t->pages[i]) {
                                t->pages[i]->pins = 0;
                                page_drop(t->pages[i]);
                        }
                r = directory_resize(t, n_pages);
                if (r < 0)
                        return r;
        }
        t->size = size;

        for (uint64_t pi = from / t->page_size; pi < n_pages && pi * t->page_size < to; pi++) {
                uint64_t start = pi * t->page_size;
                uint32_t len = page_len(t, pi), a, z;
                tc_page *pg = t->pages[pi];

                if (!pg && start >= old_held_end) {
                        /* Wholly new: made, not read. */
                        r = page_alloc(t, pi, len, &pg);
                        if (r < 0)
                                return r;
                        pg->len = len;
                        page_insert(t, pg);
                } else if (!pg) {
                        r = page_find(t, pi, &pg);
                        if (r < 0)
                                return r;
                }
                if (len > pg->cap) {
                        uint8_t *d;

                        r = make_room(t->budget, len - pg->cap);
                        if (r < 0)
                                return r;
                        d = realloc(pg->data, len);
                        if (!d)
                                return vdisk_error(-ENOMEM, "out of memory");
                        charge(t->budget, len - pg->cap);
                        pg->charged += len - pg->cap;
                        pg->data = d;
                        pg->cap = len;
                }
                if (len < pg->len && pg->n_dirty > 0) {
                        /* Shrinking: sectors past the new end are not ours. */
                        for (uint32_t s = len / TC_SECTOR; s < pg->len / TC_SECTOR; s++)
                                if (bitmap_get(pg->dirty, s)) {
                                        bitmap_clear(pg->dirty, s);
                                        pg->n_dirty--;
                                }
                        if (pg->n_dirty == 0)
                                page_cleaned(pg);
                }
                pg->len = len;
                a = (uint32_t) (MAX(from, start) - start);
                z = (uint32_t) (MIN(to, start + len) - start);
                for (uint32_t o = a; o + ps <= z; o += ps)
                        put_entry(pg->data + o, t->entry == TC_RAW ? TC_RAW : t->entry, fill);
                if (z > a)
                        page_mark(pg, a, z - a, 0);
        }
        return 0;
}

/* ---------------------------------------------------------------- pages */

int tc_page_get(tc_table *t, uint64_t index, tc_page **ret) {
        tc_page *pg;
        int r;

        assert(t);
        assert(ret);

        r = page_find(t, index, &pg);
        if (r < 0)
                return r;
        pg->pins++;
        *ret = pg;
        return 0;
}

void tc_page_put(tc_page *pg) {
        assert(pg && pg->pins > 0);
        pg->pins--;
}

uint8_t *tc_page_data(tc_page *pg) {
        return pg->data;
}

uint32_t tc_page_len(const tc_page *pg) {
        return pg->len;
}

void tc_page_dirty(tc_page *pg, uint32_t off, uint32_t len, uint32_t flags) {
        assert(pg);
        if (len > 0)
                page_mark(pg, off, len, flags);
}

bool tc_page_is_dirty(const tc_page *pg) {
        return pg->n_dirty > 0;
}

int tc_page_depends(tc_page *pg, tc_page *on) {
        assert(pg && on);
        assert(pg->table->budget == on->table->budget);

        if (on->n_dirty == 0)
                return 0;
        if (pg == on)
                return vdisk_error(-EDEADLK, "table cache: a page cannot wait for itself");
        for (size_t i = 0; i < pg->n_deps; i++)
                if (pg->deps[i] == on)
                        return 0;
        if (pg->n_deps == pg->n_deps_alloc) {
                size_t a = MAX(pg->n_deps_alloc * 2, (size_t) 2);
                tc_page **v = reallocarray(pg->deps, a, sizeof *v);
                if (!v)
                        return vdisk_error(-ENOMEM, "out of memory");
                pg->deps = v;
                pg->n_deps_alloc = a;
        }
        pg->deps[pg->n_deps++] = on;
        return 0;
}

/* ---------------------------------------------------------------- whole tables */

#define TC_WRITE_CHUNK (UINT32_C(256) << 10)

int tc_write_entries(vdisk_io *io, uint64_t offset, uint64_t n, tc_entry entry, uint64_t pad,
                     int (*fn)(void *ctx, uint64_t i, uint64_t *ret), void *ctx) {
        unsigned es = tc_entry_size(entry);
        uint64_t total, per_chunk = TC_WRITE_CHUNK / es;
        int r;

        assert(io);
        assert(es > 0);
        assert(fn);

        if (MUL_OVERFLOW(n, (uint64_t) es, &total))
                return vdisk_error(-EFBIG, "table of %" PRIu64 " entries is too large", n);
        total = ALIGN_UP(total, (uint64_t) TC_SECTOR);

        _cleanup_free_ uint8_t *buf = malloc(TC_WRITE_CHUNK);
        if (!buf)
                return vdisk_error(-ENOMEM, "out of memory");

        for (uint64_t done = 0, first = 0; done < total; first += per_chunk) {
                size_t len = (size_t) MIN((uint64_t) TC_WRITE_CHUNK, total - done);

                for (size_t o = 0; o < len; o += es) {
                        uint64_t i = first + o / es, v = pad;

                        if (i < n) {
                                r = fn(ctx, i, &v);
                                if (r < 0)
                                        return r;
                        }
                        put_entry(buf + o, entry, v);
                }
                r = io_pwrite(io, buf, len, offset + done);
                if (r < 0)
                        return r;
                done += len;
        }
        return 0;
}
