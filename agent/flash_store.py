"""FlashStore: the flag store on a raw flash partition, NVS-style (no file system).

The same map and the same promises as agent.store.Store (atomic, durable
batch commits; never acknowledged before they are on flash; a power cut at
any moment leaves the state of the last acknowledged commit, or of the one in
flight), written the way ESP-IDF's NVS and Zephyr's ZMS write: fixed-size
entries programmed into erased pages, and a page erased only when the pages
run out. On littlefs a one-flag commit programs ~2 KB and erases a block
(littlefs copies a file's last block on every flush); here it programs one
48-byte record and erases one block per ~95 commits (bench store).

It never does I/O of its own: the block device is handed in
(firmware_shim.flash: esp32.Partition, rp2.Flash, or RamFlash in tests):
readblocks(block, buf, offset), writeblocks(block, buf, offset) without
erasing, ioctl(4) block count, ioctl(5) block size, ioctl(6, block) erase.

Layout. Every block is a page:
    page    = HEADER  record*  (0xFF to the end)
    HEADER  = b"FSNV" | page seq u32 | crc32 u32 | dead u32        (16 bytes)
              dead: 0xFFFFFFFF while the page counts; programmed to 0 once its
              live values are copied on, just before it is erased
    record  = word u16 (kind << 14 | payload length) | seq u32 | crc32 u32 | payload,
              padded with 0xFF to a multiple of 16 bytes; the crc covers the
              first 6 header bytes and the payload. kind 1: a commit (the
              changes, None deletes); kind 2: a copy (live values moved off a
              page before it is erased). 0xFFFF where a word should be: the
              page's free space starts there.
Pages are used in page-seq order and records are appended to the newest one
(the active page), so reading pages in page-seq order and records in page
order replays every commit in order, with one page buffer of RAM.

Reclaiming. When a record does not fit, the next page is taken: an erased
one gets a header (a page that is not all 0xFF is erased first). Then, while
fewer than RESERVE erased pages are left, the oldest page is reclaimed: the
values whose newest record lives on it are copied into the active page in
one copy record, the page is marked dead, and it is erased. So erases happen
only as pages fill, one per page. The dead mark is what makes a reclaim safe
against a cut erase: a half-erased page could otherwise bring back values
its own later records had deleted (the deletion gone with the erased half).

Recovery (on open). Pages with a bad header, or marked dead, are free. A record that fails its
crc (a torn program) ends its page: nothing is read after it, and nothing is
ever written there again (the page is sealed: the next commit takes a new
page). A page whose records hold no live value is reclaimed at once (a copy
that completed before its page's erase was cut; a page sealed by a torn copy).
After every program the record is read back; a mismatch seals the page and
the commit fails with StoreIOError, its state untouched.

Power-loss safety is proved like the file store's: tests cut the power at
every program and every erase of a scenario on RamFlash (under the
MicroPython unix port and CPython) and check each reboot.
"""
import struct

from agent.store_format import (
    StoreClosedError,
    StoreError,
    StoreFullError,
    StoreIOError,
    StoreState,
    StoreValueError,
    apply_changes,
)
from firmware_shim import codec
from firmware_shim.crypto import crc32

MAGIC = b"FSNV"
HEADER = 16
RECORD_HEADER = 10
ALIGN = 16
COMMIT = 1
COPY = 2
ERASED_WORD = 0xFFFF
MAX_SEQ = 0xFFFFFFFF
RESERVE = 1  # erased pages kept in hand: a reclaim always has a fresh page to copy into
MIN_PAGES = 3


def encode_page_header(page_seq):
    head = MAGIC + struct.pack("<I", page_seq)
    return head + struct.pack("<I", crc32(head)) + b"\xff" * 4


DEAD_AT = 12
DEAD = b"\x00" * 4


def decode_page_header(data):
    """The page seq, or None for a page that is erased, torn, marked dead or not ours."""
    if data[:4] != MAGIC or struct.unpack("<I", data[8:12])[0] != crc32(bytes(data[:8])):
        return None
    if bytes(data[DEAD_AT:HEADER]) != b"\xff" * 4:  # any bit of the mark: dead
        return None
    return struct.unpack("<I", data[4:8])[0]


def encode_record(kind, seq, payload):
    head = struct.pack("<HI", (kind << 14) | len(payload), seq)
    body = head + struct.pack("<I", crc32(head + payload)) + payload
    pad = -len(body) % ALIGN
    return body + b"\xff" * pad


def decode_record(page, pos):
    """(kind, seq, payload, next pos), "end" at free space, or None for a torn/bad record."""
    if pos + 2 > len(page):
        return "end"
    word = page[pos] | (page[pos + 1] << 8)
    if word == ERASED_WORD:
        return "end"
    if pos + RECORD_HEADER > len(page):
        return None
    kind, length = word >> 14, word & 0x3FFF
    end = pos + RECORD_HEADER + length
    if kind not in (COMMIT, COPY) or end > len(page):
        return None
    seq = struct.unpack("<I", page[pos + 2:pos + 6])[0]
    crc = struct.unpack("<I", page[pos + 6:pos + 10])[0]
    payload = bytes(page[pos + RECORD_HEADER:end])
    if crc32(bytes(page[pos:pos + 6]) + payload) != crc:
        return None
    return kind, seq, payload, end + (-(end - pos) % ALIGN)


def _all_erased(buf, start=0):
    for i in range(start, len(buf)):
        if buf[i] != 0xFF:
            return False
    return True


class FlashStore(StoreState):
    """A key-value map on a raw flash block device; see the module docstring."""

    def __init__(self, device, logger=None, path="flash"):
        self.dev = device
        self.path = path  # for messages only
        self._log = logger or (lambda msg: None)
        self.block_size = device.ioctl(5, 0)
        self.blocks = device.ioctl(4, 0)
        if self.blocks < MIN_PAGES:
            raise StoreValueError("a flash store needs at least %d blocks, not %d" % (
                MIN_PAGES, self.blocks))
        self.capacity = self.block_size - HEADER  # the largest record that fits a page
        self._page = bytearray(self.block_size)  # the one page buffer
        self._closed = False
        self._needs_reopen = False
        self._stats = {"bytes_programmed": 0, "erases": 0, "commits": 0, "noop_commits": 0,
                       "failed_commits": 0, "reclaims": 0, "copied_bytes": 0, "recovered": 0,
                       "dropped_records": 0}
        self._open()

    # ------------------------------------------------------------ reading
    @property
    def needs_reopen(self):
        return self._needs_reopen

    def stats(self):
        out = dict(self._stats)
        out["seq"] = self._seq
        out["keys"] = len(self._state)
        out["pages_used"] = len(self._pages)
        out["pages_free"] = len(self._free)
        out["needs_reopen"] = self._needs_reopen
        return out

    # ------------------------------------------------------------ opening
    def _read_page(self, block):
        self.dev.readblocks(block, self._page, 0)
        return self._page

    def _open(self):
        self._state = {}
        self._where = {}  # key -> page seq of its newest record
        self._pages = {}  # page seq -> block
        self._free = []  # blocks with no valid header (erased, or to be erased when taken)
        self._seq = 0
        self._active = None  # (page seq, block)
        self._pos = 0
        self._sealed = False
        for block in range(self.blocks):
            self.dev.readblocks(block, self._page, 0)
            page_seq = decode_page_header(self._page)
            if page_seq is None:
                self._free.append(block)
            else:
                self._pages[page_seq] = block
        for page_seq in sorted(self._pages):
            self._replay(page_seq, self._pages[page_seq])
        if self._seq:
            self._seq += 1  # burn the number a record in flight may have carried
        self._reclaim_dead_pages()
        if self._active is not None and len(self._free) < RESERVE and self._pages_to_reclaim():
            self._reclaim(min(self._pages_to_reclaim()))

    def _replay(self, page_seq, block):
        page = self._read_page(block)
        pos = HEADER
        sealed = False
        while True:
            rec = decode_record(page, pos)
            if rec == "end":
                break
            if rec is None:  # a torn program (or a reclaim's erase cut): nothing after it counts
                sealed = True
                self._stats["dropped_records"] += 1
                self._stats["recovered"] = 1
                break
            kind, seq, payload, pos = rec
            try:
                changes = codec.unpackb_trusted(payload)
            except Exception:  # a crc-valid record we cannot decode: written by a bug
                sealed = True
                self._stats["dropped_records"] += 1
                break
            apply_changes(self._state, changes)
            for key in changes:
                self._where[key] = page_seq
            if seq > self._seq:
                self._seq = seq
        if not sealed and not _all_erased(page, pos):
            sealed = True  # bytes programmed past the last record: never program over them
            self._stats["recovered"] = 1
        self._active = (page_seq, block)  # the newest page so far
        self._pos = pos
        self._sealed = sealed

    def _live_pages(self):
        live = set()
        for key, page_seq in self._where.items():
            if key in self._state:
                live.add(page_seq)
        return live

    def _pages_to_reclaim(self):
        """Full pages other than the active one, oldest first."""
        active = self._active[0] if self._active is not None else None
        return sorted(s for s in self._pages if s != active)

    def _reclaim_dead_pages(self):
        """Erase every page that holds no live value (the active one too, if sealed)."""
        live = self._live_pages()
        for page_seq in sorted(self._pages):
            is_active = self._active is not None and page_seq == self._active[0]
            if page_seq in live or (is_active and not self._sealed):
                continue
            block = self._pages.pop(page_seq)
            self._kill(block)
            self._free.append(block)
            if is_active:
                self._active = None

    # ------------------------------------------------------------ writing
    def _erase(self, block):
        self.dev.ioctl(6, block)
        self._stats["erases"] += 1

    def _kill(self, block):
        """Mark a page dead (it no longer counts, whatever survives of it), then erase it."""
        self._program(block, DEAD_AT, DEAD)
        self._erase(block)

    def _program(self, block, offset, data):
        self._stats["bytes_programmed"] += len(data)
        self.dev.writeblocks(block, data, offset)
        back = bytearray(len(data))
        self.dev.readblocks(block, back, offset)
        if bytes(back) != bytes(data):
            raise OSError(5, "flash read back differs at block %d offset %d" % (block, offset))

    def _next_page(self):
        """Take an erased page as the active one, then reclaim until RESERVE pages are free."""
        if not self._free:
            raise StoreFullError("flash store %s: no free page" % self.path)
        block = self._free.pop(0)
        page = self._read_page(block)
        if not _all_erased(page):
            self._erase(block)
        page_seq = max(self._pages) + 1 if self._pages else 1
        self._program(block, 0, encode_page_header(page_seq))
        self._pages[page_seq] = block
        self._active = (page_seq, block)
        self._pos = HEADER
        self._sealed = False
        while len(self._free) < RESERVE and self._pages_to_reclaim():
            self._reclaim(self._pages_to_reclaim()[0])

    def _reclaim(self, page_seq):
        """Copy the live values of page `page_seq` into the active page, then erase it."""
        live = {}
        for key, where in self._where.items():
            if where == page_seq and key in self._state:
                live[key] = self._state[key]
        if live:
            payload = codec.packb(live)
            record = encode_record(COPY, self._take_seq(), payload)
            if self._sealed or self._pos + len(record) > self.block_size:
                raise StoreFullError("flash store %s: the live values do not fit a page" %
                                     self.path)
            self._program(self._active[1], self._pos, record)
            self._pos += len(record)
            self._stats["copied_bytes"] += len(record)
            for key in live:
                self._where[key] = self._active[0]
        block = self._pages.pop(page_seq)
        self._kill(block)
        self._free.append(block)
        self._stats["reclaims"] += 1

    def _take_seq(self):
        if self._seq >= MAX_SEQ:
            raise StoreError("sequence numbers exhausted")
        self._seq += 1
        return self._seq

    def commit(self, changes):
        """Apply `changes` (a dict; None deletes) atomically and durably; as Store.commit."""
        self._check_open()
        real = self._real_changes(changes)
        if not real:
            self._stats["noop_commits"] += 1
            return None
        try:
            payload = codec.packb(real)
        except codec.CodecError as exc:
            raise StoreValueError("cannot encode: %s" % exc) from None
        if RECORD_HEADER + len(payload) > min(self.capacity, 0x3FFF):
            raise StoreValueError("record of %d bytes is too large" % len(payload))
        try:
            for _ in range(self.blocks + 1):
                if (self._active is not None and not self._sealed
                        and self._pos + RECORD_HEADER + len(payload) <= self.block_size):
                    break
                self._next_page()
            else:
                raise StoreFullError("flash store %s is full" % self.path)
            seq = self._take_seq()
            record = encode_record(COMMIT, seq, payload)
            self._program(self._active[1], self._pos, record)
        except OSError as exc:
            self._stats["failed_commits"] += 1
            self._sealed = True  # whatever reached this page stays unread; a new page next
            raise StoreIOError("flash store %s: commit not durable: %s" % (self.path, exc)) \
                from None
        self._pos += len(record)
        apply_changes(self._state, codec.unpackb_trusted(payload))
        for key in real:
            self._where[key] = self._active[0]
        self._stats["commits"] += 1
        return seq

    def compact(self):
        """Nothing to do: pages are reclaimed as they fill (kept for Store's interface)."""
        self._check_open()

    def reopen(self):
        """Read the flash back, as a reboot would."""
        self._needs_reopen = False
        self._open()

    def close(self):
        self._closed = True

    def _check_open(self):
        if self._closed:
            raise StoreClosedError("flash store %s is closed" % self.path)
