package crashfs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.etcd.io/bbolt"
)

// mount mounts a crashfs over a new backing directory (or the given one).
func mount(t *testing.T, backing string, opts Options) *FS {
	t.Helper()
	if backing == "" {
		backing = t.TempDir()
	}
	mnt := t.TempDir()
	f, err := Mount(backing, mnt, opts)
	if err != nil {
		t.Fatalf("crashfs needs FUSE (root and /dev/fuse): %v", err)
	}
	t.Cleanup(func() {
		f.mu.Lock()
		dead := f.dead
		f.mu.Unlock()
		if !dead {
			f.Cut()
		}
	})
	return f
}

func cut(t *testing.T, f *FS) {
	t.Helper()
	if _, err := f.Cut(); err != nil {
		t.Fatal(err)
	}
}

func syncPath(t *testing.T, p string) {
	t.Helper()
	d, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", p, err)
	}
}

func writeFile(t *testing.T, p string, data []byte, sync bool) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if sync {
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func content(t *testing.T, p string) (string, bool) {
	t.Helper()
	b, err := os.ReadFile(p)
	if os.IsNotExist(err) {
		return "", false
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(b), true
}

func TestUnsyncedDataLost(t *testing.T) {
	f := mount(t, "", Options{})
	p := filepath.Join(f.Mountpoint, "a")
	writeFile(t, p, nil, true)
	syncPath(t, f.Mountpoint) // the name is durable, the file empty
	writeFile(t, p, []byte("hello"), false)
	if got, _ := content(t, p); got != "hello" {
		t.Fatalf("a read through the mount sees %q, want the unsynced write", got)
	}
	cut(t, f)
	if got, ok := content(t, filepath.Join(f.Backing, "a")); !ok || got != "" {
		t.Fatalf("after the cut: %q (exists %v), want an empty file", got, ok)
	}
}

func TestSyncedDataKept(t *testing.T) {
	f := mount(t, "", Options{})
	writeFile(t, filepath.Join(f.Mountpoint, "a"), []byte("hello"), true)
	syncPath(t, f.Mountpoint)
	// A later unsynced overwrite is lost, the synced data stays.
	writeFile(t, filepath.Join(f.Mountpoint, "a"), []byte("HELLO, WORLD"), false)
	cut(t, f)
	if got, _ := content(t, filepath.Join(f.Backing, "a")); got != "hello" {
		t.Fatalf("after the cut: %q, want hello", got)
	}
}

func TestIgnoreFileSyncs(t *testing.T) {
	f := mount(t, "", Options{IgnoreFileSyncs: true})
	writeFile(t, filepath.Join(f.Mountpoint, "a"), []byte("hello"), true)
	syncPath(t, f.Mountpoint)
	cut(t, f)
	if got, _ := content(t, filepath.Join(f.Backing, "a")); got != "" {
		t.Fatalf("an ignored fsync kept %q", got)
	}
}

func TestCreateWithoutDirSyncLost(t *testing.T) {
	f := mount(t, "", Options{})
	writeFile(t, filepath.Join(f.Mountpoint, "a"), []byte("hello"), true)
	cut(t, f)
	if _, ok := content(t, filepath.Join(f.Backing, "a")); ok {
		t.Fatal("a file whose directory was never fsynced survived the cut")
	}
}

func TestNamesNeedDirSync(t *testing.T) {
	backing := t.TempDir()
	os.WriteFile(filepath.Join(backing, "old"), []byte("old"), 0o644)
	os.WriteFile(filepath.Join(backing, "gone"), []byte("gone"), 0o644)
	f := mount(t, backing, Options{})
	m := f.Mountpoint
	if got, _ := content(t, filepath.Join(m, "old")); got != "old" {
		t.Fatalf("the mount shows %q for a file of the backing directory", got)
	}
	// Unsynced: a rename and an unlink are undone by the cut.
	if err := os.Rename(filepath.Join(m, "old"), filepath.Join(m, "new")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(m, "gone")); err != nil {
		t.Fatal(err)
	}
	cut(t, f)
	for name, want := range map[string]bool{"old": true, "gone": true, "new": false} {
		if _, ok := content(t, filepath.Join(backing, name)); ok != want {
			t.Errorf("unsynced rename/unlink: %s exists %v, want %v", name, ok, want)
		}
	}
	// Synced: they stay.
	f = mount(t, backing, Options{})
	m = f.Mountpoint
	os.Rename(filepath.Join(m, "old"), filepath.Join(m, "new"))
	os.Remove(filepath.Join(m, "gone"))
	syncPath(t, m)
	cut(t, f)
	for name, want := range map[string]bool{"old": false, "gone": false, "new": true} {
		if _, ok := content(t, filepath.Join(backing, name)); ok != want {
			t.Errorf("synced rename/unlink: %s exists %v, want %v", name, ok, want)
		}
	}
	if got, _ := content(t, filepath.Join(backing, "new")); got != "old" {
		t.Errorf("renamed file holds %q", got)
	}
}

// The atomic replace of a file: write a temporary file, fsync it, rename it
// over the old one, fsync the directory.
func TestAtomicReplace(t *testing.T) {
	backing := t.TempDir()
	os.WriteFile(filepath.Join(backing, "conf"), []byte("v1"), 0o644)
	for _, dirSync := range []bool{false, true} {
		f := mount(t, backing, Options{})
		tmp := filepath.Join(f.Mountpoint, ".conf.tmp")
		writeFile(t, tmp, []byte("v2"), true)
		if err := os.Rename(tmp, filepath.Join(f.Mountpoint, "conf")); err != nil {
			t.Fatal(err)
		}
		if dirSync {
			syncPath(t, f.Mountpoint)
		}
		cut(t, f)
		want := map[bool]string{false: "v1", true: "v2"}[dirSync]
		if got, _ := content(t, filepath.Join(backing, "conf")); got != want {
			t.Errorf("directory fsynced %v: conf holds %q, want %q", dirSync, got, want)
		}
		if _, ok := content(t, filepath.Join(backing, ".conf.tmp")); ok {
			t.Errorf("directory fsynced %v: the temporary file survived", dirSync)
		}
	}
}

func TestDirectories(t *testing.T) {
	backing := t.TempDir()
	f := mount(t, backing, Options{})
	d := filepath.Join(f.Mountpoint, "d", "e")
	if err := os.MkdirAll(d, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(d, "f"), []byte("data"), true)
	syncPath(t, d)
	syncPath(t, filepath.Dir(d))
	// The root is not synced: d's name is not durable, so nothing is.
	cut(t, f)
	if _, err := os.Stat(filepath.Join(backing, "d")); err == nil {
		t.Fatal("a directory whose parent was never fsynced survived the cut")
	}

	f = mount(t, backing, Options{})
	d = filepath.Join(f.Mountpoint, "d", "e")
	os.MkdirAll(d, 0o700)
	writeFile(t, filepath.Join(d, "f"), []byte("data"), true)
	syncPath(t, d)
	syncPath(t, f.Mountpoint) // d's name first: e's entries are still kept aside
	syncPath(t, filepath.Dir(d))
	cut(t, f)
	if got, _ := content(t, filepath.Join(backing, "d", "e", "f")); got != "data" {
		t.Fatalf("d/e/f holds %q after syncing each level", got)
	}
	if _, err := os.Stat(filepath.Join(backing, metaDir)); err == nil {
		t.Fatal("the cut left the disk's inode store behind")
	}
}

func TestSyncAndClose(t *testing.T) {
	backing := t.TempDir()
	f := mount(t, backing, Options{})
	os.MkdirAll(filepath.Join(f.Mountpoint, "x", "y"), 0o755)
	writeFile(t, filepath.Join(f.Mountpoint, "x", "y", "z"), []byte("z"), false)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got, _ := content(t, filepath.Join(backing, "x", "y", "z")); got != "z" {
		t.Fatalf("after Close: %q", got)
	}
}

func TestReorderKeepsSomePages(t *testing.T) {
	const pages = 64
	backing := t.TempDir()
	os.WriteFile(filepath.Join(backing, "f"), make([]byte, pages*PageSize), 0o644)
	f := mount(t, backing, Options{Reorder: true, Seed: 1})
	writeFile(t, filepath.Join(f.Mountpoint, "f"), bytes.Repeat([]byte{1}, pages*PageSize), false)
	st, err := f.Cut()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(backing, "f"))
	kept := 0
	for p := 0; p < len(b)/PageSize; p++ {
		page := b[p*PageSize : (p+1)*PageSize]
		switch {
		case bytes.Equal(page, bytes.Repeat([]byte{1}, PageSize)):
			kept++
		case !bytes.Equal(page, make([]byte, PageSize)):
			t.Fatalf("page %d is torn", p)
		}
	}
	t.Logf("%d of %d unsynced pages kept (stats %+v)", kept, pages, st)
	if kept == 0 || kept == pages || kept != st.PagesKept {
		t.Fatalf("kept %d of %d pages, stats say %d: want a part", kept, pages, st.PagesKept)
	}
}

// bboltRun commits n transactions of one key each on a bbolt file on a
// crashfs, cuts, and returns how many of them the file opened from the
// backing directory holds, and bbolt's check. The transactions run in a child
// process: a process must not mmap a file of a FUSE file system it serves
// itself (a page fault can stall the garbage collector, which then stops the
// goroutines that would serve it).
func bboltRun(t *testing.T, opts Options, noSync bool, n int) (found int, checkErr error) {
	t.Helper()
	f := mount(t, "", opts)
	cmd := exec.Command(os.Args[0], "-test.run=^TestBboltChild$", "-test.v")
	cmd.Env = append(os.Environ(), "CRASHFS_BBOLT_DIR="+f.Mountpoint, fmt.Sprintf("CRASHFS_BBOLT_N=%d", n),
		fmt.Sprintf("CRASHFS_BBOLT_NOSYNC=%v", noSync))
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "committed") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	st, err := f.Cut()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cut: %+v", st)
	db, err := bbolt.Open(filepath.Join(f.Backing, "db"), 0o600, &bbolt.Options{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("open after the cut: %w", err)
	}
	defer db.Close()
	defer func() {
		if r := recover(); r != nil { // bbolt panics on some damage
			checkErr = fmt.Errorf("bbolt panicked: %v", r)
		}
	}()
	err = db.View(func(tx *bbolt.Tx) error {
		var first error
		for e := range tx.Check() { // drained: the checker runs until it is done
			if first == nil {
				first = e
			}
		}
		if b := tx.Bucket([]byte("b")); b != nil {
			for i := 0; i < n; i++ {
				if v := b.Get(binary.BigEndian.AppendUint64(nil, uint64(i))); bytes.Equal(v, bboltVal) {
					found++
				}
			}
		}
		return first
	})
	return found, err
}

var bboltVal = bytes.Repeat([]byte("v"), 3000) // spills over pages

// TestBboltChild is bboltRun's child process.
func TestBboltChild(t *testing.T) {
	dir := os.Getenv("CRASHFS_BBOLT_DIR")
	if dir == "" {
		return // run by bboltRun only
	}
	n, _ := strconv.Atoi(os.Getenv("CRASHFS_BBOLT_N"))
	db, err := bbolt.Open(filepath.Join(dir, "db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	syncPath(t, dir) // bbolt does not fsync the directory: its caller must
	db.NoSync = os.Getenv("CRASHFS_BBOLT_NOSYNC") == "true"
	for i := 0; i < n; i++ {
		err := db.Update(func(tx *bbolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("b"))
			if err != nil {
				return err
			}
			return b.Put(binary.BigEndian.AppendUint64(nil, uint64(i)), bboltVal)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	fmt.Println("committed")
	// Exit without closing: the power goes while the file is open.
	os.Exit(0)
}

func TestBboltCommitsSurvive(t *testing.T) {
	for _, reorder := range []bool{false, true} {
		t.Run(fmt.Sprintf("reorder=%v", reorder), func(t *testing.T) {
			const n = 50
			found, err := bboltRun(t, Options{Reorder: reorder, Seed: 7}, false, n)
			if err != nil {
				t.Fatal(err)
			}
			if found != n {
				t.Fatalf("%d of %d committed transactions survived the cut", found, n)
			}
		})
	}
}

// TestBboltNoSyncLoses shows the file system catches a missing fsync: with
// bbolt's NoSync, committed transactions are lost (or the file is damaged).
func TestBboltNoSyncLoses(t *testing.T) {
	for _, reorder := range []bool{false, true} {
		t.Run(fmt.Sprintf("reorder=%v", reorder), func(t *testing.T) {
			const n = 50
			found, err := bboltRun(t, Options{Reorder: reorder, Seed: 7}, true, n)
			t.Logf("NoSync: %d of %d committed transactions survived, check: %v", found, n, err)
			if found == n && err == nil {
				t.Fatal("the cut lost nothing although bbolt never fsynced")
			}
		})
	}
}
