package dicom

import (
	"net/netip"
	"strings"
)

// Who acted (issue 7 item 1). A DICOM audit message may name several requestors: the
// person at a workstation and the workstation's application or AE. The person is the
// actor; the machine is where it happened (source.workstation, source.ae_title).
//
// A participant is classified from what the sender says, strongest first:
//  1. UserIDTypeCode 113871 Person ID → person; 110119 Station AE Title, 110182 Node ID,
//     113877 Device Name or RFC-3881 12 URI → machine.
//  2. UserTypeCode 1 (person) with a UserID that is not an address → person;
//     UserTypeCode 2 (process) → machine.
//  3. Machine markers: an AE title in AlternativeUserID (AETITLE=, AETITLES=), a UserID
//     that is an IP address, a URL or the participant's own NetworkAccessPointID, an
//     AlternativeUserID that is a process id (digits only).
//  4. Person markers: a UserName, or a UserID shaped like user@domain or DOMAIN\user.
//  5. A machine role (110150 Application, 110151 Application Launcher, 110152
//     Destination, 110153 Source, 110154 Destination Media, 110155 Source Media) →
//     machine. It comes after the person markers because senders give persons the
//     Source or Destination role too (PS3.15's own Instances Transferred example).
//  6. Otherwise unknown.
//
// The actor is the first requestor that is a person, else the first that is not a
// machine, else the first requestor.

type partKind int

const (
	kindMachine partKind = iota
	kindUnknown
	kindPerson
)

// machineRoles are the RoleIDCodes (CID 402) of applications, nodes and media.
var machineRoles = map[string]bool{
	"110150": true, "110151": true, "110152": true, "110153": true, "110154": true, "110155": true,
}

func (p participant) kind() partKind {
	switch p.idTypeCode {
	case "113871":
		return kindPerson
	case "110119", "110182", "113877", "12":
		return kindMachine
	}
	switch p.userType {
	case "1":
		if !isAddress(p.user) {
			return kindPerson
		}
		return kindMachine
	case "2":
		return kindMachine
	}
	if p.aeTitle() != "" || isAddress(p.user) || (p.nap != "" && strings.EqualFold(p.user, p.nap)) || isDigits(p.alt) {
		return kindMachine
	}
	if p.hasName || personForm(p.user) {
		return kindPerson // also with a Source role: PS3.15's own examples give the person one
	}
	if machineRoles[p.roleCode] {
		return kindMachine
	}
	return kindUnknown
}

// isAddress reports whether s is an IP address or a URL (or URL path).
func isAddress(s string) bool {
	if s == "" {
		return false
	}
	if _, err := netip.ParseAddr(s); err == nil {
		return true
	}
	return strings.Contains(s, "://") || strings.HasPrefix(s, "/")
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// personForm reports whether a UserID looks like a person's account: user@domain
// (not a URL) or DOMAIN\user.
func personForm(s string) bool {
	if strings.Contains(s, "://") || strings.ContainsAny(s, " /") {
		return false
	}
	if i := strings.IndexByte(s, '@'); i > 0 && i < len(s)-1 {
		return true
	}
	if i := strings.IndexByte(s, '\\'); i > 0 && i < len(s)-1 {
		return true
	}
	return false
}

// pickActor returns the index of the actor among m.parts and of the machine where it
// acted (-1 when none).
func pickActor(parts []participant) (actor, machine int) {
	actor, machine = -1, -1
	best := partKind(-1)
	for i, p := range parts {
		if !p.requestor {
			continue
		}
		if k := p.kind(); k > best {
			actor, best = i, k
		}
	}
	if actor < 0 || best == kindMachine {
		return actor, -1
	}
	for i, p := range parts {
		if i != actor && p.requestor && p.kind() != kindPerson {
			return actor, i
		}
	}
	return actor, -1
}

// workstation names the machine: its network access point, else its UserID.
func (p participant) workstation() string {
	if p.nap != "" {
		return p.nap
	}
	return p.user
}
