// Linux facilities Swift cannot reach directly: ioctl(2) is variadic, and O_DIRECT, statx's direct-I/O fields and
// pthread_setname_np are only declared with _GNU_SOURCE. Each function returns 0 or an errno value; nothing here keeps state.
#ifndef C_TANDEM_STORAGE_H
#define C_TANDEM_STORAGE_H

#include <stdint.h>

/// The O_DIRECT open flag of this platform (its value differs between architectures).
int ctandem_o_direct(void);

/// BLKGETSIZE64: the size in bytes of the block device open on `fd`.
int ctandem_block_device_size(int fd, uint64_t *size_bytes);

/// BLKSSZGET: the logical block size of the block device open on `fd`, the smallest unit of direct I/O.
int ctandem_block_device_logical_block_size(int fd, uint32_t *size_bytes);

/// statx(STATX_DIOALIGN) on the file open on `fd`. Returns 0 and sets `*known` to 1 with both alignments when the
/// file system reports them (an offset alignment of 0 then means it does not support direct I/O on this file);
/// returns 0 with `*known` 0 when the kernel or file system does not say.
int ctandem_direct_io_alignment(int fd, int *known, uint32_t *offset_align, uint32_t *memory_align);

/// Makes `length` bytes at `offset` read as zeroes without writing them: fallocate(PUNCH_HOLE|KEEP_SIZE) on a
/// file (the blocks are freed), BLKZEROOUT on a block device (which may unmap them). EOPNOTSUPP means the caller
/// must write zeroes itself.
int ctandem_zero_range(int fd, int is_block_device, uint64_t offset, uint64_t length);

/// Names the calling thread (at most 15 characters are kept), so that `top -H` and stack dumps show I/O threads.
void ctandem_name_current_thread(const char *name);

#endif
