// Package testutil holds helpers for Postie's tests: certificates from a
// throwaway CA, a DNS server on loopback, and the like. Nothing outside
// tests imports it.
package testutil
