package authcheck

// Result is the outcome of one check, spelt as in Authentication-Results
// (RFC 8601 §2.7).
type Result string

// The results the checks give.
const (
	Pass      Result = "pass"
	Fail      Result = "fail"
	SoftFail  Result = "softfail" // SPF only
	Neutral   Result = "neutral"  // SPF only
	None      Result = "none"
	TempError Result = "temperror"
	PermError Result = "permerror"
)
