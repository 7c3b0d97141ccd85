// Package crashfs is a FUSE file system for tests that simulates a power
// cut: it forgets whatever a program wrote but did not make durable.
//
// A crashfs is mounted over a backing directory, the "disk". Everything a
// program does through the mount happens at once in a shadow copy of it,
// the "page cache", which is what reads through the mount see. The disk
// changes only when the program asks for durability, by these rules:
//
//   - fsync or fdatasync of a file (both are the same here) writes the file's
//     data and size to its inode on the disk. That makes the data durable, not
//     the file's names: a file whose name is not durable is an orphan on the
//     disk, and is gone after a cut.
//   - fsync of a directory makes its entries durable as they are now: the names
//     created, renamed into it, hard linked, and the names unlinked or renamed
//     away. A name refers to the file's inode on the disk, so a file created,
//     written and named durably but never fsynced is there after a cut, empty
//     (or with whatever data of it an earlier fsync made durable). A
//     subdirectory is a name like any other: its own entries are durable only
//     once it is fsynced itself, and they are reachable only once its own name
//     is durable in its parent.
//   - Nothing else is ever durable: no write-back happens by itself, however
//     long ago the write was (a real kernel writes back within seconds, but
//     promises nothing). Modes follow the data of a file; owners, times and
//     extended attributes are not kept at all.
//
// Cut drops everything not durable, unmounts, and leaves the backing
// directory holding exactly what a power cut would have left on the disk:
// mount a new crashfs over it (or open it directly) to see what survived. In
// Reorder mode (Options.Reorder), a cut also keeps a random half of the
// unsynced data of every file that has an inode on the disk, in 4 KiB pages,
// as a disk that reorders and loses writes would; unsynced names are still all
// lost, and of a page overwritten several times since the last fsync only the
// last version can be kept.
//
// Sync (the sync(2) of this file system) makes everything durable; Close syncs
// and unmounts, as a clean shutdown would.
//
// How: the shadow copy is a temporary directory served by go-fuse's loopback
// node; writes mark the 4 KiB pages they touch dirty for their inode; fsync
// copies the dirty pages from the shadow file to the inode's file on the disk,
// kept in the backing directory under .crashfs/ until the cut; a directory's
// fsync makes the entries of its copy on the disk hard links to those inodes.
// The mount must not be written to other than through its own mount point.
package crashfs

import (
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// PageSize is the unit of the data a Reorder cut keeps or drops.
const PageSize = 4096

// metaDir is where, in the backing directory, the disk keeps inodes until the
// cut: f/<id> for files (hard linked from their durable names) and d/<id> for
// directories whose name is not durable.
const metaDir = ".crashfs"

// Options adjust a crashfs.
type Options struct {
	// Reorder makes a cut keep a random subset of each file's unsynced
	// pages instead of none.
	Reorder bool
	// Seed seeds the Reorder choice.
	Seed uint64
	// IgnoreFileSyncs makes fsync and fdatasync of files succeed without
	// making anything durable: a disk that lies, or a program whose fsyncs
	// were removed. It shows that a test notices a missing fsync.
	IgnoreFileSyncs bool
}

// FS is a mounted crashfs.
type FS struct {
	Backing, Mountpoint string
	shadow              string
	opts                Options
	server              *fuse.Server

	mu     sync.Mutex
	inodes map[uint64]*inode // by inode number in the shadow copy
	dirs   map[int]dirLoc    // where each directory's entries live on the disk
	nextID int
	dead   bool
	// Stats counts what was made durable.
	stats Stats
}

// Stats counts the durability requests served.
type Stats struct {
	FileSyncs, DirSyncs int
	PagesSynced         int
	// PagesDropped and PagesKept count the unsynced pages of files with an
	// inode on the disk at the cut (kept only in Reorder mode).
	PagesDropped, PagesKept int
}

type inode struct {
	id      int
	dir     bool
	dirty   map[int64]struct{} // pages written since the last fsync
	minSize int64              // smallest size set since the last fsync
	shadow  *os.File           // the shadow file, kept open for fsync and cut
}

// dirLoc is a directory on the disk: the name parent/name, or, with parent
// -1, the stash metaDir/d/<id> (a directory whose name is not durable).
type dirLoc struct {
	parent int
	name   string
}

const rootID = 0

// Mount mounts a crashfs over backing at mountpoint (an existing empty
// directory). What backing holds is durable from the start.
func Mount(backing, mountpoint string, opts Options) (*FS, error) {
	backing, err := filepath.Abs(backing)
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(filepath.Join(backing, metaDir)); err != nil {
		return nil, err
	}
	shadow, err := os.MkdirTemp("", "crashfs-cache-")
	if err != nil {
		return nil, err
	}
	f := &FS{Backing: backing, Mountpoint: mountpoint, shadow: shadow, opts: opts,
		inodes: map[uint64]*inode{}, dirs: map[int]dirLoc{rootID: {parent: rootID}}, nextID: rootID + 1}
	if err := f.load(); err != nil {
		os.RemoveAll(shadow)
		return nil, fmt.Errorf("crashfs: copying %s: %w", backing, err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(shadow, &st); err != nil {
		return nil, err
	}
	lr := &fs.LoopbackRoot{Path: shadow, Dev: uint64(st.Dev)}
	root := &node{LoopbackNode: fs.LoopbackNode{RootData: lr}, fs: f}
	lr.RootNode = root
	f.inodes[st.Ino] = &inode{id: rootID, dir: true}
	zero := time.Duration(0)
	f.server, err = fs.Mount(mountpoint, root, &fs.Options{
		EntryTimeout: &zero, AttrTimeout: &zero, NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{DirectMount: true, FsName: "crashfs", Name: "crashfs", AllowOther: true},
	})
	if err != nil {
		os.RemoveAll(shadow)
		return nil, fmt.Errorf("crashfs: mount on %s: %w", mountpoint, err)
	}
	return f, nil
}

// load copies the backing directory into the shadow copy and registers its
// files and directories as durable inodes.
func (f *FS) load() error {
	ids := map[string]int{".": rootID}
	return filepath.Walk(f.Backing, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(f.Backing, p)
		if rel == "." {
			return nil
		}
		if rel == metaDir {
			return filepath.SkipDir
		}
		sp := filepath.Join(f.shadow, rel)
		id := f.nextID
		switch {
		case info.IsDir():
			if err := os.Mkdir(sp, info.Mode().Perm()); err != nil {
				return err
			}
			ids[rel] = id
			f.dirs[id] = dirLoc{parent: ids[filepath.Dir(rel)], name: info.Name()}
		case info.Mode().IsRegular():
			if err := os.MkdirAll(filepath.Join(f.Backing, metaDir, "f"), 0o700); err != nil {
				return err
			}
			if err := os.Link(p, f.inodeFile(id)); err != nil {
				return err
			}
			if err := copyFile(p, sp, info.Mode().Perm()); err != nil {
				return err
			}
		case info.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, sp)
		default:
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(sp, &st); err != nil {
			return err
		}
		f.nextID++
		f.inodes[st.Ino] = &inode{id: id, dir: info.IsDir(), minSize: math.MaxInt64}
		return nil
	})
}

func copyFile(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (f *FS) inodeFile(id int) string {
	return filepath.Join(f.Backing, metaDir, "f", strconv.Itoa(id))
}

// dirPath is where directory id keeps its entries on the disk, created if it
// is a stash that does not exist yet.
func (f *FS) dirPath(id int) (string, error) {
	if id == rootID {
		return f.Backing, nil
	}
	loc, ok := f.dirs[id]
	if !ok || loc.parent < 0 {
		p := filepath.Join(f.Backing, metaDir, "d", strconv.Itoa(id))
		if !ok {
			f.dirs[id] = dirLoc{parent: -1}
		}
		return p, os.MkdirAll(p, 0o700)
	}
	pp, err := f.dirPath(loc.parent)
	return filepath.Join(pp, loc.name), err
}

// newInode registers the shadow inode ino as a new inode, not on the disk.
// Callers hold f.mu.
func (f *FS) newInode(ino uint64, dir bool) *inode {
	old := f.inodes[ino]
	if old != nil && old.shadow != nil {
		old.shadow.Close()
	}
	in := &inode{id: f.nextID, dir: dir, minSize: math.MaxInt64}
	f.nextID++
	f.inodes[ino] = in
	return in
}

// lookup returns the inode of ino, registering it when unknown. Callers
// hold f.mu.
func (f *FS) lookup(ino uint64, dir bool) *inode {
	if in := f.inodes[ino]; in != nil && in.dir == dir {
		return in
	}
	return f.newInode(ino, dir)
}

// markDirty records a write of n bytes at off.
func (f *FS) markDirty(in *inode, off int64, n int) {
	if n <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if in.dirty == nil {
		in.dirty = map[int64]struct{}{}
	}
	for p := off / PageSize; p <= (off+int64(n)-1)/PageSize; p++ {
		in.dirty[p] = struct{}{}
	}
}

func (f *FS) markSize(in *inode, size int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	in.minSize = min(in.minSize, size)
}

// syncFile makes the data of in, read from the shadow file sf, durable.
// Callers hold f.mu.
func (f *FS) syncFile(in *inode, sf *os.File, always bool) error {
	if f.dead {
		return syscall.EIO
	}
	f.stats.FileSyncs++
	if f.opts.IgnoreFileSyncs && !always {
		return nil
	}
	if err := os.MkdirAll(filepath.Join(f.Backing, metaDir, "f"), 0o700); err != nil {
		return err
	}
	st, err := sf.Stat()
	if err != nil {
		return err
	}
	disk, err := os.OpenFile(f.inodeFile(in.id), os.O_RDWR|os.O_CREATE, st.Mode().Perm())
	if err != nil {
		return err
	}
	defer disk.Close()
	if ds, err := disk.Stat(); err == nil && in.minSize < ds.Size() {
		if err := disk.Truncate(in.minSize); err != nil {
			return err
		}
	}
	buf := make([]byte, PageSize)
	for _, p := range sortedPages(in.dirty) {
		n, err := sf.ReadAt(buf, p*PageSize)
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if n == 0 {
			continue
		}
		if _, err := disk.WriteAt(buf[:n], p*PageSize); err != nil {
			return err
		}
		f.stats.PagesSynced++
	}
	if err := disk.Truncate(st.Size()); err != nil {
		return err
	}
	if err := disk.Chmod(st.Mode().Perm()); err != nil {
		return err
	}
	in.dirty, in.minSize = nil, math.MaxInt64
	return nil
}

func sortedPages(m map[int64]struct{}) []int64 {
	ps := make([]int64, 0, len(m))
	for p := range m {
		ps = append(ps, p)
	}
	sort.Slice(ps, func(i, j int) bool { return ps[i] < ps[j] })
	return ps
}

// syncDir makes the entries of the shadow directory sp, inode in, durable.
// Callers hold f.mu.
func (f *FS) syncDir(in *inode, sp string) error {
	if f.dead {
		return syscall.EIO
	}
	f.stats.DirSyncs++
	dp, err := f.dirPath(in.id)
	if err != nil {
		return err
	}
	entries, err := os.ReadDir(sp)
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, e := range entries {
		name := e.Name()
		want[name] = true
		var st syscall.Stat_t
		if err := syscall.Lstat(filepath.Join(sp, name), &st); err != nil {
			return err
		}
		target := filepath.Join(dp, name)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			c := f.lookup(st.Ino, false)
			src := f.inodeFile(c.id)
			if err := os.MkdirAll(filepath.Dir(src), 0o700); err != nil {
				return err
			}
			if fd, err := os.OpenFile(src, os.O_CREATE|os.O_RDONLY, os.FileMode(st.Mode&0o777)); err != nil {
				return err
			} else {
				fd.Close()
			}
			if same(src, target) {
				continue
			}
			if err := f.remove(in.id, dp, name); err != nil {
				return err
			}
			if err := os.Link(src, target); err != nil {
				return err
			}
		case syscall.S_IFDIR:
			c := f.lookup(st.Ino, true)
			if loc, ok := f.dirs[c.id]; ok && loc == (dirLoc{in.id, name}) {
				continue
			}
			src, err := f.dirPath(c.id)
			if err != nil {
				return err
			}
			if err := f.remove(in.id, dp, name); err != nil {
				return err
			}
			if err := os.Rename(src, target); err != nil {
				return err
			}
			os.Chmod(target, os.FileMode(st.Mode&0o777))
			f.dirs[c.id] = dirLoc{in.id, name}
		case syscall.S_IFLNK:
			link, err := os.Readlink(filepath.Join(sp, name))
			if err != nil {
				return err
			}
			if old, err := os.Readlink(target); err == nil && old == link {
				continue
			}
			if err := f.remove(in.id, dp, name); err != nil {
				return err
			}
			if err := os.Symlink(link, target); err != nil {
				return err
			}
		}
	}
	disk, err := os.ReadDir(dp)
	if err != nil {
		return err
	}
	for _, e := range disk {
		if !want[e.Name()] && !(in.id == rootID && e.Name() == metaDir) {
			if err := f.remove(in.id, dp, e.Name()); err != nil {
				return err
			}
		}
	}
	return nil
}

func same(a, b string) bool {
	sa, err := os.Lstat(a)
	if err != nil {
		return false
	}
	sb, err := os.Lstat(b)
	return err == nil && os.SameFile(sa, sb)
}

// remove removes the entry name of directory parent (on the disk at dp); a
// directory with an id goes to the stash with its entries, so that it can
// be named again.
func (f *FS) remove(parent int, dp, name string) error {
	p := filepath.Join(dp, name)
	if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	for id, loc := range f.dirs {
		if loc == (dirLoc{parent, name}) && id != rootID {
			f.dirs[id] = dirLoc{parent: -1}
			stash := filepath.Join(f.Backing, metaDir, "d")
			if err := os.MkdirAll(stash, 0o700); err != nil {
				return err
			}
			return os.Rename(p, filepath.Join(stash, strconv.Itoa(id)))
		}
	}
	return os.RemoveAll(p)
}

// Sync makes everything durable, as sync(2) would (also with
// IgnoreFileSyncs).
func (f *FS) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return filepath.Walk(f.shadow, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		st := info.Sys().(*syscall.Stat_t)
		switch {
		case info.IsDir():
			return f.syncDir(f.lookup(st.Ino, true), p)
		case info.Mode().IsRegular():
			in := f.lookup(st.Ino, false)
			sf, err := os.Open(p)
			if err != nil {
				return err
			}
			defer sf.Close()
			return f.syncFile(in, sf, true)
		}
		return nil
	})
}

// Stats returns the counts so far.
func (f *FS) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

// Cut simulates a power cut: it drops everything not durable (or, in Reorder
// mode, keeps a random part of the unsynced data) and unmounts. Processes
// using the mount should be dead: their open files are cut off.
func (f *FS) Cut() (Stats, error) {
	f.mu.Lock()
	f.dead = true
	var err error
	rnd := rand.New(rand.NewPCG(f.opts.Seed, 0x9e3779b97f4a7c15))
	for _, in := range f.inodes {
		if len(in.dirty) == 0 {
			continue
		}
		disk, oerr := os.OpenFile(f.inodeFile(in.id), os.O_RDWR, 0)
		if oerr != nil {
			continue // no inode on the disk: nothing of it can survive
		}
		buf := make([]byte, PageSize)
		for _, p := range sortedPages(in.dirty) {
			if !f.opts.Reorder || in.shadow == nil || rnd.IntN(2) == 0 {
				f.stats.PagesDropped++
				continue
			}
			n, rerr := in.shadow.ReadAt(buf, p*PageSize)
			if rerr != nil && !errors.Is(rerr, io.EOF) {
				err = rerr
			}
			if n > 0 {
				if _, werr := disk.WriteAt(buf[:n], p*PageSize); werr != nil {
					err = werr
				}
			}
			f.stats.PagesKept++
		}
		disk.Close()
	}
	stats := f.stats
	f.mu.Unlock()
	if uerr := f.unmount(); err == nil {
		err = uerr
	}
	if rerr := os.RemoveAll(filepath.Join(f.Backing, metaDir)); err == nil {
		err = rerr
	}
	return stats, err
}

// Close makes everything durable and unmounts, as a clean shutdown would.
func (f *FS) Close() error {
	err := f.Sync()
	f.mu.Lock()
	f.dead = true
	f.mu.Unlock()
	if uerr := f.unmount(); err == nil {
		err = uerr
	}
	if rerr := os.RemoveAll(filepath.Join(f.Backing, metaDir)); err == nil {
		err = rerr
	}
	return err
}

// unmount unmounts and removes the shadow copy. A mount still in use after
// a second is detached: it goes when its last file is closed.
func (f *FS) unmount() error {
	var err error
	for i := 0; i < 50; i++ {
		if err = f.server.Unmount(); err == nil {
			f.server.Wait()
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		err = syscall.Unmount(f.Mountpoint, syscall.MNT_DETACH)
	}
	f.mu.Lock()
	for _, in := range f.inodes {
		if in.shadow != nil {
			in.shadow.Close()
			in.shadow = nil
		}
	}
	f.mu.Unlock()
	if rerr := os.RemoveAll(f.shadow); err == nil {
		err = rerr
	}
	return err
}
