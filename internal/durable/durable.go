// Package durable makes file-system names survive a power cut. fsync of a
// file makes its data durable, not its name: a new file, a rename or a new
// directory is durable only once the directory holding it has been
// fsynced (the power-cut tests in e2e, on internal/testutil/crashfs, show
// each case).
package durable

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// SyncDir fsyncs a directory, making the names in it durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	// Some file systems cannot sync a directory (EINVAL); nothing more
	// can be done there.
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// MkdirAll is os.MkdirAll whose new directories survive a power cut: the
// parent of every directory it creates is fsynced, from the deepest up.
func MkdirAll(path string, perm os.FileMode) error {
	path = filepath.Clean(path)
	var created []string
	for p := path; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		}
		created = append(created, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(path, perm); err != nil {
		return err
	}
	for _, p := range created {
		if err := SyncDir(filepath.Dir(p)); err != nil {
			return err
		}
	}
	return nil
}

// Created makes a file just created at path durable by name: it fsyncs the
// directory holding it.
func Created(path string) error { return SyncDir(filepath.Dir(path)) }
