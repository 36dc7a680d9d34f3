package fhir

import (
	"strings"

	"github.com/edgeaudit/edgeaudit/audit"
)

// agentKind is what an AuditEvent agent names, as far as its who, type and role tell.
type agentKind int

const (
	agentUnknown agentKind = iota // neither a person nor a machine is recognizable
	agentPerson                   // a workforce member (Practitioner, humanuser, IRCP, …)
	agentMachine                  // a device, application or process (Device, DCM 110150–110155, …)
	agentPatient                  // the patient (Patient reference, RoleClass PAT, datasubject)
)

// Person and machine markers in agent.type / agent.role codings. Codes are compared
// exactly (the FHIR code systems are case-sensitive), whatever the system, except that
// DICOM role codes must come from the DICOM system.
var (
	personCodes = map[string]bool{
		"humanuser":      true, // extra-security-role-type
		"IRCP":           true, // v3-ParticipationType information recipient (BALP user)
		"AUT":            true, // author
		"INF":            true, // informant
		"ENT":            true, // data enterer
		"PRF":            true, // performer
		"ATND":           true, // attender
		"AGNT":           true, // v3-RoleClass agent (BALP user for push)
		"CST":            true, // custodian (BALP user for export); provenance "custodian" is lower case
		"UserSamlAgent":  true, // BALP UserAgentTypes
		"UserOauthAgent": true,
	}
	machineCodes = map[string]bool{
		"authserver": true, "datacollector": true, "dataprocessor": true, // extra-security-role-type
		"AuthzOauthService": true, // BALP UserAgentTypes
		"custodian":         true, // provenance-participant-type, BALP Delete's server
	}
	dicomMachineRoles = map[string]bool{
		"110150": true, // Application
		"110151": true, // Application Launcher
		"110152": true, // Destination Role ID
		"110153": true, // Source Role ID
		"110154": true, // Destination Media
		"110155": true, // Source Media
	}
	personTypes = map[string]bool{"Practitioner": true, "PractitionerRole": true, "Person": true, "RelatedPerson": true}
)

// agentCodes returns the codings of an agent's type and roles.
func agentCodes(a *node) []coding {
	cs := codings(a.get("type"))
	for _, r := range a.all("role") {
		cs = append(cs, codings(r)...)
	}
	return cs
}

// kindOf classifies an agent. The type of who wins (a Practitioner in a Destination
// role is still a person); then person codes; then machine codes and a Device.
func kindOf(a *node) agentKind {
	who := a.get("who")
	switch t := refType(who); {
	case t == "Patient":
		return agentPatient
	case personTypes[t]:
		return agentPerson
	}
	cs := agentCodes(a)
	for _, c := range cs {
		if c.code == "PAT" || c.code == "datasubject" {
			return agentPatient
		}
	}
	for _, c := range cs {
		if personCodes[c.code] {
			return agentPerson
		}
	}
	if refType(who) == "Device" {
		return agentMachine
	}
	for _, c := range cs {
		if machineCodes[c.code] || (isDCM(c.system) && dicomMachineRoles[c.code]) {
			return agentMachine
		}
	}
	return agentUnknown
}

// hasCode reports whether an agent carries code in its type or roles.
func hasAgentCode(a *node, code string) bool {
	for _, c := range agentCodes(a) {
		if c.code == code {
			return true
		}
	}
	return false
}

// pickActor chooses the agent that is the actor:
//  1. the first requestor that is a person (or the patient);
//  2. else the first requestor that is neither a person nor a machine (a bare name);
//  3. else the first person that is not a Destination (DCM 110152, a recipient): the
//     user behind a requesting machine, or when no agent is marked requestor;
//  4. else the first requestor (a single requesting machine stays the actor);
//  5. else the first agent.
//
// It returns the index into agents, or -1 when there are none.
func pickActor(agents []*node, kinds []agentKind) int {
	req := func(i int) bool { return agents[i].str("requestor") == "true" }
	for i := range agents {
		if req(i) && (kinds[i] == agentPerson || kinds[i] == agentPatient) {
			return i
		}
	}
	for i := range agents {
		if req(i) && kinds[i] == agentUnknown {
			return i
		}
	}
	for i := range agents {
		if kinds[i] == agentPerson && !hasAgentCode(agents[i], "110152") {
			return i
		}
	}
	for i := range agents {
		if req(i) {
			return i
		}
	}
	if len(agents) > 0 {
		return 0
	}
	return -1
}

// agentNetwork is an agent's network access point: R4 network.address, R5
// networkString / networkUri / networkReference.
func agentNetwork(a *node) string {
	nr := a.get("networkReference")
	return firstNonEmpty(a.get("network").str("address"), a.str("networkString"), a.str("networkUri"),
		nr.str("display"), nr.get("identifier").str("value"))
}

// whoName is how an agent's who names it: identifier value, display, reference.
func whoName(who *node) string {
	return firstNonEmpty(who.get("identifier").str("value"), who.str("display"), who.str("reference"))
}

// isObserver reports whether an agent's who is the AuditEvent's source.observer (the
// server that recorded the event, never the workstation): any of its reference,
// identifier value and display equals any of the observer's.
func isObserver(who, obs *node) bool {
	if who == nil || obs == nil {
		return false
	}
	names := func(n *node) []string {
		var out []string
		for _, v := range []string{n.str("reference"), n.get("identifier").str("value"), n.str("display")} {
			if v = strings.TrimSpace(v); v != "" {
				out = append(out, v)
			}
		}
		return out
	}
	on := names(obs)
	for _, w := range names(who) {
		if has(on, w) {
			return true
		}
	}
	return false
}

// markerOnly reports whether a type or role names only what kind of agent it is
// (humanuser, IRCP, …), which is not a role in the RBAC sense.
func markerOnly(n *node) bool {
	cs := codings(n)
	if len(cs) == 0 || n.str("text") != "" {
		return false
	}
	for _, c := range cs {
		if !personCodes[c.code] {
			return false
		}
	}
	return true
}

// actor fills ev.Actor, ev.Source.Workstation and the actor's network detail from the
// agents, and adds patients that act or are named as agents (tokens, never the actor).
func (m mapper) actor(r *node, ev *audit.Event, detail map[string]string, patients *[]patientTok) {
	agents := r.all("agent")
	kinds := make([]agentKind, len(agents))
	for i, a := range agents {
		kinds[i] = kindOf(a)
		if kinds[i] == agentPatient {
			if p := m.patientFromReference(r, a.get("who")); p.token != "" {
				*patients = append(*patients, p)
			}
		}
	}
	ai := pickActor(agents, kinds)
	if ai < 0 {
		return
	}
	a := agents[ai]
	who := a.get("who")
	if kinds[ai] == agentPatient {
		// A patient acting (portal access): the patient is tokenized above, never the actor.
		ev.Actor.Role = "patient"
	} else {
		// R4 agent.name is not used: a person's name in its own element is dropped (the
		// ID in who is what identifies a workforce member).
		ev.Actor.User = clip(whoName(who), maxTextLen)
	}
	ev.Actor.Requestor = a.str("requestor") == "true"
	if ev.Actor.Role == "" {
		for _, rl := range a.all("role") {
			if markerOnly(rl) {
				continue
			}
			if ev.Actor.Role = conceptText(rl); ev.Actor.Role != "" {
				break
			}
		}
	}
	if t := a.get("type"); ev.Actor.Role == "" && !markerOnly(t) {
		ev.Actor.Role = conceptText(t)
	}
	ev.Actor.Role = clip(ev.Actor.Role, maxTextLen)
	// Session: the security token the agent acted under (BALP: agent.policy holds the
	// SAML assertion ID or the OAuth token ID). A policy that is a URL names a consent
	// or rule, not a session, and is skipped.
	for _, p := range a.all("policy") {
		if v := strings.TrimSpace(p.val); v != "" && !strings.Contains(v, "://") && kinds[ai] != agentPatient {
			ev.Actor.Session = clip(v, maxCodeLen)
			break
		}
	}

	// Workstation: where a person acted. The first machine agent that is not the
	// recording server (source.observer), by its network address, else its name; failing
	// that, the person's own network address. A machine that is itself the actor, and a
	// patient, have none.
	nw := agentNetwork(a)
	if kinds[ai] == agentPerson || kinds[ai] == agentUnknown {
		// Not for a patient: the device a patient used (a phone at home) is theirs, and
		// its address is PHI.
		obs := r.get("source").get("observer")
		for i, o := range agents {
			if i == ai || kinds[i] != agentMachine || isObserver(o.get("who"), obs) {
				continue
			}
			if ws := firstNonEmpty(agentNetwork(o), whoName(o.get("who"))); ws != "" {
				ev.Source.Workstation = clip(ws, maxTextLen)
				break
			}
		}
		if ev.Source.Workstation == "" && kinds[ai] == agentPerson {
			ev.Source.Workstation = clip(nw, maxTextLen)
		}
	}
	if nw != "" && kinds[ai] != agentPatient && clip(nw, maxTextLen) != ev.Source.Workstation {
		detail["actor.network"] = clip(nw, maxTextLen)
	}
}
