#define _GNU_SOURCE
#include "CTandemStorage.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

int ctandem_o_direct(void) { return O_DIRECT; }

int ctandem_block_device_size(int fd, uint64_t *size_bytes) {
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) return errno;
    *size_bytes = size;
    return 0;
}

int ctandem_block_device_logical_block_size(int fd, uint32_t *size_bytes) {
    int size = 0;
    if (ioctl(fd, BLKSSZGET, &size) != 0) return errno;
    if (size <= 0) return EINVAL;
    *size_bytes = (uint32_t)size;
    return 0;
}

int ctandem_direct_io_alignment(int fd, int *known, uint32_t *offset_align, uint32_t *memory_align) {
    *known = 0;
    *offset_align = 0;
    *memory_align = 0;
#ifdef STATX_DIOALIGN
    struct statx st;
    if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &st) != 0) {
        // An old kernel without statx, or a file system that cannot answer: not an error, just unknown.
        return (errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP) ? 0 : errno;
    }
    if (st.stx_mask & STATX_DIOALIGN) {
        *known = 1;
        *offset_align = st.stx_dio_offset_align;
        *memory_align = st.stx_dio_mem_align;
    }
#endif
    return 0;
}

int ctandem_zero_range(int fd, int is_block_device, uint64_t offset, uint64_t length) {
    if (is_block_device) {
        uint64_t range[2] = {offset, length};
        if (ioctl(fd, BLKZEROOUT, range) == 0) return 0;
        return (errno == ENOTTY || errno == EOPNOTSUPP) ? EOPNOTSUPP : errno;
    }
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0) return 0;
    return (errno == ENOSYS || errno == EOPNOTSUPP) ? EOPNOTSUPP : errno;
}

void ctandem_name_current_thread(const char *name) {
    char truncated[16];
    strncpy(truncated, name, sizeof truncated - 1);
    truncated[sizeof truncated - 1] = 0;
    (void)pthread_setname_np(pthread_self(), truncated);
}
