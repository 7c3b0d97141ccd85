// Package plural writes counts with their nouns in the right number: "1
// message", "2 messages", "0 messages". Every reply and log line that
// counts something uses it, so none says "(1 messages deleted)".
package plural

import "strconv"

// Integer is any integer type a count may come in.
type Integer interface {
	~int | ~int8 | ~int16 | ~int32 | ~int64 | ~uint | ~uint8 | ~uint16 | ~uint32 | ~uint64
}

// Count returns n and the noun: singular when n is 1 (or -1), otherwise
// the plural, which is singular+"s" unless given.
func Count[N Integer](n N, singular string, pluralForm ...string) string {
	return formatInt(n) + " " + Noun(n, singular, pluralForm...)
}

// Noun returns the noun alone, in the number n calls for.
func Noun[N Integer](n N, singular string, pluralForm ...string) string {
	if n == 1 || isMinusOne(n) {
		return singular
	}
	if len(pluralForm) > 0 {
		return pluralForm[0]
	}
	return singular + "s"
}

func isMinusOne[N Integer](n N) bool {
	var zero N
	return n < zero && n+1 == zero
}

func formatInt[N Integer](n N) string {
	var zero N
	if n < zero {
		return strconv.FormatInt(int64(n), 10)
	}
	return strconv.FormatUint(uint64(n), 10)
}
