// The fleet list: sortable, filterable and virtualised (only the rows in view exist),
// so a fleet of thousands costs a few dozen DOM rows.

const ROW_HEIGHT = 24;
const OVERSCAN = 8;
const STATE_ORDER = { RED: 0, ORANGE: 1, GREEN: 2, OFFLINE: 3 };

export class FleetList {
  constructor({ container, spacer, head, filter, stateFilter, fleet, onSelect }) {
    this.container = container;
    this.spacer = spacer;
    this.fleet = fleet;
    this.onSelect = onSelect;
    this.sortKey = "id";
    this.descending = false;
    this.filterText = "";
    this.stateFilter = "";
    this.selected = null;
    this.rows = [];  // ids in display order
    this.dirty = true;
    this.rowPool = new Map();  // index -> element
    container.addEventListener("scroll", () => this.paint());
    filter.addEventListener("input", () => { this.filterText = filter.value.trim().toLowerCase(); this.refresh(); });
    stateFilter.addEventListener("change", () => { this.stateFilter = stateFilter.value; this.refresh(); });
    this.headButtons = [...head.querySelectorAll("button[data-sort]")];
    for (const button of this.headButtons) {
      button.addEventListener("click", () => this.sortBy(button.dataset.sort));
    }
    this.markSort();
  }

  sortBy(key) {
    this.descending = key === this.sortKey ? !this.descending : key === "speed" || key === "seen";
    this.sortKey = key;
    this.markSort();
    this.refresh();
  }

  markSort() {
    for (const button of this.headButtons) {
      button.classList.toggle("asc", button.dataset.sort === this.sortKey && !this.descending);
      button.classList.toggle("desc", button.dataset.sort === this.sortKey && this.descending);
    }
  }

  select(id) {
    this.selected = id;
    this.paint();
    const index = this.rows.indexOf(id);
    if (index >= 0) {
      const top = index * ROW_HEIGHT;
      if (top < this.container.scrollTop || top > this.container.scrollTop + this.container.clientHeight - ROW_HEIGHT) {
        this.container.scrollTop = top - this.container.clientHeight / 2;
      }
    }
  }

  // Re-filters and re-sorts, then repaints (called at most once a frame by the page).
  refresh(now = Date.now()) {
    const fleet = this.fleet;
    const text = this.filterText;
    const rows = [];
    const shown = new Map();
    for (const [id, ambulance] of fleet.byId) {
      if (text && !id.toLowerCase().includes(text)) continue;
      const state = fleet.shownState(ambulance, now);
      if (this.stateFilter && state !== this.stateFilter) continue;
      shown.set(id, state);
      rows.push(id);
    }
    const key = this.sortKey;
    const value = (id) => {
      const a = fleet.byId.get(id);
      if (key === "state") return STATE_ORDER[shown.get(id)] ?? 9;
      if (key === "speed") return a.speed ?? -1;
      if (key === "seen") return a.seen ?? 0;
      return 0;
    };
    rows.sort((x, y) => {
      const byValue = key === "id" ? 0 : value(x) - value(y);
      const order = byValue || (x < y ? -1 : x > y ? 1 : 0);
      return this.descending ? -order : order;
    });
    this.rows = rows;
    this.states = shown;
    this.spacer.style.height = `${rows.length * ROW_HEIGHT}px`;
    this.paint(now);
  }

  // Draws the rows in view (and a few around them), reusing their elements.
  paint(now = Date.now()) {
    const first = Math.max(0, Math.floor(this.container.scrollTop / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((this.container.scrollTop + this.container.clientHeight) / ROW_HEIGHT) + OVERSCAN);
    for (const [index, element] of this.rowPool) {
      if (index < first || index >= last) {
        element.remove();
        this.rowPool.delete(index);
      }
    }
    for (let index = first; index < last; index++) {
      let element = this.rowPool.get(index);
      if (!element) {
        element = document.createElement("div");
        element.className = "row";
        element.style.top = `${index * ROW_HEIGHT}px`;
        for (let i = 0; i < 4; i++) element.appendChild(document.createElement("span"));
        element.addEventListener("click", () => this.onSelect(element.dataset.id));
        this.spacer.appendChild(element);
        this.rowPool.set(index, element);
      }
      this.fillRow(element, this.rows[index], now);
    }
  }

  fillRow(element, id, now) {
    const ambulance = this.fleet.byId.get(id);
    const state = this.states.get(id);
    element.dataset.id = id;
    element.classList.toggle("selected", id === this.selected);
    const [idCell, stateCell, speedCell, seenCell] = element.children;
    idCell.textContent = id;
    stateCell.textContent = state;
    stateCell.className = `st-${state}`;
    speedCell.textContent = ambulance.speed === undefined ? "" : ambulance.speed.toFixed(1);
    seenCell.textContent = ago(ambulance.seen, now);
  }
}

export function ago(ms, now = Date.now()) {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(ms).toLocaleDateString();
}
