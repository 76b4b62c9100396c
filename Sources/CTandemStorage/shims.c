#define _GNU_SOURCE
#include "CTandemStorage.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <pthread.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sched.h>
#include <sys/sysmacros.h>

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

int ctandem_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

void ctandem_name_current_thread(const char *name) {
    char truncated[16];
    strncpy(truncated, name, sizeof truncated - 1);
    truncated[sizeof truncated - 1] = 0;
    (void)pthread_setname_np(pthread_self(), truncated);
}

int ctandem_open_loop_node(int number, int flags) {
    char path[32];
    snprintf(path, sizeof path, "/dev/loop%d", number);
    int fd = open(path, flags);
    if (fd >= 0 || errno != ENOENT) return fd;
    // A /dev without udev (a container's, or a lab node's private one) has no node for a device allocated after it
    // was populated: make it from the numbers sysfs gives, as udev would.
    char sysfs[64];
    snprintf(sysfs, sizeof sysfs, "/sys/block/loop%d/dev", number);
    FILE *file = fopen(sysfs, "re");
    if (file == NULL) {
        errno = ENOENT;
        return -1;
    }
    unsigned major_number = 0, minor_number = 0;
    int parsed = fscanf(file, "%u:%u", &major_number, &minor_number);
    fclose(file);
    if (parsed != 2) {
        errno = ENOENT;
        return -1;
    }
    if (mknod(path, S_IFBLK | 0660, makedev(major_number, minor_number)) != 0 && errno != EEXIST) return -1;
    return open(path, flags);
}

int ctandem_loop_attach(int file_fd, int direct_io, const char *backing_name, int *loop_number) {
    int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (control < 0) return errno;
    int result = EBUSY;
    // A free device can be taken by another process between GET_FREE and CONFIGURE; a few retries settle that.
    for (int attempt = 0; attempt < 8 && result == EBUSY; attempt++) {
        int number = ioctl(control, LOOP_CTL_GET_FREE);
        if (number < 0) {
            result = errno;
            break;
        }
        char path[32];
        snprintf(path, sizeof path, "/dev/loop%d", number);
        int loop = ctandem_open_loop_node(number, O_RDWR | O_CLOEXEC);
        if (loop < 0) {
            result = errno;
            // udev may not have created the node yet on a device just allocated.
            if (result == ENOENT) result = EBUSY;
            continue;
        }
        struct loop_config config;
        memset(&config, 0, sizeof config);
        config.fd = (uint32_t)file_fd;
        config.info.lo_flags = direct_io ? LO_FLAGS_DIRECT_IO : 0;
        strncpy((char *)config.info.lo_file_name, backing_name, LO_NAME_SIZE - 1);
        result = ioctl(loop, LOOP_CONFIGURE, &config) == 0 ? 0 : errno;
        close(loop);
        if (result == 0) *loop_number = number;
    }
    close(control);
    return result;
}

int ctandem_loop_detach(int loop_fd) { return ioctl(loop_fd, LOOP_CLR_FD, 0) == 0 ? 0 : errno; }

int ctandem_loop_recorded_name(int loop_fd, char *name) {
    struct loop_info64 info;
    if (ioctl(loop_fd, LOOP_GET_STATUS64, &info) != 0) return errno;
    memcpy(name, info.lo_file_name, LO_NAME_SIZE);
    name[LO_NAME_SIZE - 1] = 0;
    return 0;
}

int ctandem_loop_clear_autoclear(int loop_fd) {
    struct loop_info64 info;
    if (ioctl(loop_fd, LOOP_GET_STATUS64, &info) != 0) return errno;
    info.lo_flags &= ~LO_FLAGS_AUTOCLEAR;
    return ioctl(loop_fd, LOOP_SET_STATUS64, &info) == 0 ? 0 : errno;
}

int ctandem_harden_io_daemon(int *failed_step) {
#ifndef PR_SET_IO_FLUSHER
#define PR_SET_IO_FLUSHER 57
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif
    if (prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) != 0) {
        *failed_step = 1;
        return errno;
    }
    if (mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0) {
        *failed_step = 2;
        return errno;
    }
    *failed_step = 0;
    return 0;
}

int ctandem_enter_network_namespace(int namespace_fd) { return setns(namespace_fd, CLONE_NEWNET); }
