// libfuse3's low-level API for the FUSE block-file frontend. FUSE_USE_VERSION must precede the include; since
// libfuse 3.12 it is major * 100 + minor.
#ifndef C_FUSE_SHIM_H
#define C_FUSE_SHIM_H

#define FUSE_USE_VERSION 314
#include <fuse_lowlevel.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#endif
