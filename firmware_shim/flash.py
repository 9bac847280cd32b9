"""Raw flash for the agent's state: a board's partition, or a NOR chip in RAM for tests.

A block device here is MicroPython's extended block protocol, which
esp32.Partition and rp2.Flash implement (and which VfsLfs2 mounts):
    readblocks(block, buf, offset)    read len(buf) bytes at block*size+offset
    writeblocks(block, buf, offset)   program them without erasing (NOR: 1 -> 0 only)
    ioctl(4, 0) -> block count, ioctl(5, 0) -> block size, ioctl(6, block) erases one
agent.flash_store keeps the state on such a device; board_partition() finds
the board's own, and RamFlash is the chip the power-loss tests cut.

RamFlash behaves like NOR flash: erase sets a block to 0xFF, a program can
only clear bits (new = old AND data), and it counts what the flash would
wear: bytes programmed and blocks erased. cut_at(n) makes the n-th program
or erase from now the last one: it lands half done (half the bytes
programmed, half the block erased: the first half, or with last=True the
second half, since a chip need not go in address order) and PowerCut is
raised, which no code in the agent catches, as a real power cut.
"""

BLOCK_COUNT = 4
BLOCK_SIZE = 5
BLOCK_ERASE = 6


class PowerCut(BaseException):
    """The power went at a program or an erase (raised by RamFlash.cut_at)."""


class RamFlash:
    def __init__(self, blocks=8, block_size=4096):
        self.block_size = block_size
        self.blocks = blocks
        self.data = bytearray(b"\xff" * (blocks * block_size))
        self.programmed = 0  # bytes handed to writeblocks
        self.erases = 0
        self.ops = 0  # programs and erases so far
        self._cut = None
        self._cut_last = False

    def cut_at(self, n, last=False):
        """The n-th program or erase from now (1 = the next one) is cut halfway."""
        self._cut = self.ops + n
        self._cut_last = last

    def uncut(self):
        self._cut = None

    def _op(self):
        self.ops += 1
        return self._cut is not None and self.ops >= self._cut

    def readblocks(self, block, buf, offset=0):
        start = block * self.block_size + offset
        buf[:] = self.data[start:start + len(buf)]

    def writeblocks(self, block, buf, offset=None):
        if offset is None:  # the simple protocol: erase, then program the whole block
            self.ioctl(BLOCK_ERASE, block)
            offset = 0
        start = block * self.block_size + offset
        cut = self._op()
        lo, hi = 0, len(buf)
        if cut:
            lo, hi = (len(buf) // 2, len(buf)) if self._cut_last else (0, len(buf) // 2)
        for i in range(lo, hi):
            self.data[start + i] &= buf[i]
        self.programmed += hi - lo
        if cut:
            raise PowerCut("cut while programming %d bytes at %d" % (len(buf), start))

    def ioctl(self, op, arg):
        if op == BLOCK_COUNT:
            return self.blocks
        if op == BLOCK_SIZE:
            return self.block_size
        if op == BLOCK_ERASE:
            cut = self._op()
            lo, hi = 0, self.block_size
            if cut:
                half = self.block_size // 2
                lo, hi = (half, hi) if self._cut_last else (0, half)
            start = arg * self.block_size
            self.data[start + lo:start + hi] = b"\xff" * (hi - lo)
            self.erases += 1
            if cut:
                raise PowerCut("cut while erasing block %d" % arg)
            return 0
        return 0  # 1 init, 2 deinit, 3 sync: nothing to do in RAM


class FileFlash:
    """A NOR chip kept in a file: the unix port's stand-in for a board's partition.

    Same semantics as RamFlash (program ANDs, erase writes 0xFF), each
    operation written through to the file at once, so a killed process
    leaves the chip as a power cut would leave the board's flash.
    """

    def __init__(self, path, size, block_size=4096):
        if size % block_size or size < block_size:
            raise OSError(22, "a file partition is a whole number of %d-byte blocks" %
                          block_size)
        self.block_size = block_size
        self.blocks = size // block_size
        try:
            self.f = open(path, "r+b")
        except OSError:
            self.f = open(path, "w+b")
        self.f.seek(0, 2)
        have = self.f.tell()
        if have < size:  # a new chip: erased
            self.f.write(b"\xff" * (size - have))
            self.f.flush()

    def readblocks(self, block, buf, offset=0):
        self.f.seek(block * self.block_size + offset)
        data = self.f.read(len(buf))
        buf[:len(data)] = data

    def writeblocks(self, block, buf, offset=None):
        if offset is None:
            self.ioctl(BLOCK_ERASE, block)
            offset = 0
        old = bytearray(len(buf))
        self.readblocks(block, old, offset)
        for i in range(len(buf)):
            old[i] &= buf[i]
        self.f.seek(block * self.block_size + offset)
        self.f.write(old)
        self.f.flush()

    def ioctl(self, op, arg):
        if op == BLOCK_COUNT:
            return self.blocks
        if op == BLOCK_SIZE:
            return self.block_size
        if op == BLOCK_ERASE:
            self.f.seek(arg * self.block_size)
            self.f.write(b"\xff" * self.block_size)
            self.f.flush()
            return 0
        return 0


class AlignedPrograms:
    """A block device whose programs must cover whole pages (rp2: 256-byte flash pages).

    A program of a few bytes becomes a program of the pages around them: the
    bytes already there are programmed again as they are (on NOR flash that
    changes no bit), so only the record's own bits change; erases are untouched.
    """

    def __init__(self, dev, page=256):
        self.dev = dev
        self.page = page

    def readblocks(self, block, buf, offset=0):
        self.dev.readblocks(block, buf, offset)

    def writeblocks(self, block, buf, offset=None):
        if offset is None:
            return self.dev.writeblocks(block, buf)
        start = offset - offset % self.page
        end = offset + len(buf)
        end += -end % self.page
        window = bytearray(end - start)
        self.dev.readblocks(block, window, start)
        for i in range(len(buf)):
            window[offset - start + i] &= buf[i]
        self.dev.writeblocks(block, window, start)

    def ioctl(self, op, arg):
        return self.dev.ioctl(op, arg)


def board_partition(name, path_of=None):
    """The board's raw flash partition `name` as a block device.

    ESP32: a data partition of that label in the partition table
    (esp32.Partition.find). RP2 (Pico W): rp2.Flash() is the file system's own
    region, so `name` must be "rp2:START:LEN" (bytes, 4 KiB aligned) carved
    out of it by the board's firmware build; see README ("a raw flash
    partition for the state"). The unix port: "file:PATH:BYTES", a FileFlash
    (path_of maps PATH onto the board's flash folder). Raises OSError when
    the board has no such part.
    """
    if name.startswith("file:"):
        rest = name[len("file:"):]
        cut = rest.rfind(":")
        try:
            path, size = rest[:cut], int(rest[cut + 1:])
        except ValueError:
            path = ""
        if cut <= 0 or not path:
            raise OSError(22, "state_partition %r is not file:PATH:BYTES" % name)
        return FileFlash(path_of(path) if path_of else path, size)
    try:
        import esp32  # ESP32 ports only
    except ImportError:
        esp32 = None
    if esp32 is not None:
        found = esp32.Partition.find(esp32.Partition.TYPE_DATA, label=name)
        if not found:
            raise OSError(2, "no data partition labelled %r" % name)
        return found[0]
    try:
        import rp2  # RP2040/RP2350 ports only
    except ImportError:
        rp2 = None
    if rp2 is not None and name.startswith("rp2:"):
        _, start, length = name.split(":")
        # rp2.Flash.writeblocks hands the pico SDK's flash_range_program any
        # offset, which wants whole 256-byte pages: programs are widened to them
        return AlignedPrograms(rp2.Flash(start=int(start), len=int(length)), 256)
    raise OSError(19, "this port has no raw flash partition %r" % name)
