package crashfs

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is go-fuse's loopback node, told about creations, opens and size
// changes, and giving its files and directories handles that track writes
// and serve fsync.
type node struct {
	fs.LoopbackNode
	fs *FS
}

// WrapChild makes every node of the tree a node.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if lb, ok := ops.(*fs.LoopbackNode); ok {
		return &node{LoopbackNode: fs.LoopbackNode{RootData: lb.RootData}, fs: n.fs}
	}
	return ops
}

func (n *node) shadowPath() string {
	return filepath.Join(n.fs.shadow, n.Path(nil))
}

// track returns the inode of a regular file just opened or created, with its
// shadow file kept open, and wraps its handle.
func (n *node) track(ino uint64, fh fs.FileHandle, fresh bool) fs.FileHandle {
	lf, ok := fh.(*fs.LoopbackFile)
	if !ok {
		return fh
	}
	f := n.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	var in *inode
	if fresh {
		in = f.newInode(ino, false)
	} else {
		in = f.lookup(ino, false)
	}
	if in.shadow == nil {
		// A handle of its own, for reading (the program's may be write-only),
		// that works also once the file is unlinked.
		if fd, ok := lf.PassthroughFd(); ok {
			if sf, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", fd)); err == nil {
				in.shadow = sf
			}
		}
	}
	return &file{LoopbackFile: lf, fs: f, in: in}
}

func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	_, err := os.Lstat(filepath.Join(n.shadowPath(), name))
	existed := err == nil
	ch, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return ch, fh, fl, errno
	}
	return ch, n.track(ch.StableAttr().Ino, fh, !existed), fl, 0
}

func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
	if errno == 0 && mode&syscall.S_IFMT == syscall.S_IFREG {
		n.fs.mu.Lock()
		n.fs.newInode(ch.StableAttr().Ino, false)
		n.fs.mu.Unlock()
	}
	return ch, errno
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Mkdir(ctx, name, mode, out)
	if errno == 0 {
		n.fs.mu.Lock()
		n.fs.newInode(ch.StableAttr().Ino, true)
		n.fs.mu.Unlock()
	}
	return ch, errno
}

func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	ch, fh, fl, errno := n.LoopbackNode.Tmpfile(ctx, flags, mode, out)
	if errno != 0 {
		return ch, fh, fl, errno
	}
	return ch, n.track(ch.StableAttr().Ino, fh, true), fl, 0
}

func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return fh, fl, errno
	}
	h := n.track(n.StableAttr().Ino, fh, false)
	if flags&syscall.O_TRUNC != 0 {
		n.fs.markSize(h.(*file).in, 0)
	}
	return h, fl, 0
}

func (n *node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok && !n.IsDir() {
		n.fs.mu.Lock()
		st := n.fs.lookup(n.StableAttr().Ino, false)
		n.fs.mu.Unlock()
		n.fs.markSize(st, int64(size))
	}
	if fh, ok := f.(*file); ok {
		f = fh.LoopbackFile
	}
	return n.LoopbackNode.Setattr(ctx, f, in, out)
}

// CopyFileRange is refused, so the kernel copies with reads and writes,
// which are tracked.
func (n *node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	ds, errno := fs.NewLoopbackDirStream(n.shadowPath())
	if errno != 0 {
		return nil, 0, errno
	}
	return &dir{ds: ds, n: n}, 0, 0
}

// file is a loopback file handle whose writes mark pages dirty and whose
// fsync makes them durable.
type file struct {
	*fs.LoopbackFile
	fs *FS
	in *inode
}

func (h *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, errno := h.LoopbackFile.Write(ctx, data, off)
	h.fs.markDirty(h.in, off, int(n))
	return n, errno
}

func (h *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	n, errno := h.LoopbackFile.Writev(ctx, data, off)
	h.fs.markDirty(h.in, off, int(n))
	return n, errno
}

func (h *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	errno := h.LoopbackFile.Allocate(ctx, off, size, mode)
	if errno == 0 {
		h.fs.markDirty(h.in, int64(off), int(size))
	}
	return errno
}

func (h *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	h.fs.mu.Lock()
	defer h.fs.mu.Unlock()
	sf := h.in.shadow
	if sf == nil {
		return syscall.EIO
	}
	return fs.ToErrno(h.fs.syncFile(h.in, sf, false))
}

// dir is a loopback directory handle whose fsync makes its entries durable.
type dir struct {
	ds fs.DirStream
	n  *node
}

func (d *dir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if r, ok := d.ds.(fs.FileReaddirenter); ok {
		return r.Readdirent(ctx)
	}
	if !d.ds.HasNext() {
		return nil, 0
	}
	e, errno := d.ds.Next()
	return &e, errno
}

func (d *dir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if s, ok := d.ds.(fs.FileSeekdirer); ok {
		return s.Seekdir(ctx, off)
	}
	return syscall.ENOTSUP
}

func (d *dir) Releasedir(ctx context.Context, flags uint32) {
	if r, ok := d.ds.(fs.FileReleasedirer); ok {
		r.Releasedir(ctx, flags)
		return
	}
	d.ds.Close()
}

func (d *dir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	f := d.n.fs
	f.mu.Lock()
	defer f.mu.Unlock()
	sp := d.n.shadowPath()
	var st syscall.Stat_t
	if err := syscall.Stat(sp, &st); err != nil { // the root's node number is not its inode's
		return fs.ToErrno(err)
	}
	return fs.ToErrno(f.syncDir(f.lookup(st.Ino, true), sp))
}

// PassthroughFd refuses FUSE passthrough, which would send reads and writes
// to the shadow file without this file system seeing them.
func (h *file) PassthroughFd() (int, bool) { return 0, false }
