"""The seed example: PYNQ's buffer code, unchanged but for the import."""

from pynq_alloc import allocate

buf = allocate(shape=(5,), dtype="u4")
buf[:] = range(5)
buf.flush()
print(f"buf = {buf.view(type(buf).__base__)} at device_address {buf.device_address:#x}")
# dma.write(buf.device_address) would hand this address to the DMA engine in the PL.
